//! runv-vmm: runs one microVM. See vmm/README.md for flags, exit statuses and the API.

use anyhow::Context;
use runv_vmm::config::VmmConfig;
use runv_vmm::log_line;
use runv_vmm::vmm::{start_instant, Vmm};
use runv_vmm::vstate::vcpu::ExitReason;
use runv_vmm::{EXIT_FORCED_SHUTDOWN, EXIT_GUEST_CRASH, EXIT_GUEST_SHUTDOWN, EXIT_VMM_ERROR};

const USAGE: &str = "\
usage: runv-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--memory-mib N]
                [--serial stdio|none|unix:PATH|PATH] [--vsock-uds PATH] [--disk PATH[,ro]]...
                [--fs-socket PATH --fs-tag TAG] [--net-tap NAME [--net-mac MAC]]
                [--api-socket PATH] [--id SANDBOX_ID] [--no-seccomp]
       runv-vmm --config FILE.json [--id SANDBOX_ID] [--no-seccomp]
       runv-vmm jail --id ID --uid UID --gid GID [--chroot-base DIR] [--netns PATH]
                     [--cgroup DIR]... -- ARGS...

exit status: 0 guest shut down or rebooted, 1 monitor error, 2 guest crashed
             (panic, triple fault, KVM internal error), 3 forced stop after shutdown timeout";

fn run() -> anyhow::Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("jail") {
        let cfg = runv_vmm::jailer::parse_jail_args(&args[1..]).context("Bad jail arguments")?;
        return runv_vmm::jailer::run_jail(&cfg).context("Cannot start runv-vmm in its jail");
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(EXIT_GUEST_SHUTDOWN);
    }
    if args.iter().any(|a| a == "--version") {
        println!("runv-vmm {}", env!("CARGO_PKG_VERSION"));
        return Ok(EXIT_GUEST_SHUTDOWN);
    }
    let config = VmmConfig::from_args(args).context("Bad arguments (see --help)")?;
    runv_vmm::logger::set_sandbox_id(config.id.as_deref());
    let vmm = Vmm::try_from(config).context("Cannot build the VM")?;
    log_line!(
        "VM built in {} us, kernel command line: {}",
        start_instant().elapsed().as_micros(),
        vmm.cmdline()
    );
    let reason = vmm.run().context("Cannot run the VM")?;
    Ok(match reason {
        ExitReason::GuestShutdown(why) => {
            log_line!("guest shut down ({why})");
            EXIT_GUEST_SHUTDOWN
        }
        ExitReason::GuestCrash(why) => {
            log_line!("guest crashed: {why}");
            EXIT_GUEST_CRASH
        }
        ExitReason::Forced => {
            log_line!("guest did not shut down in time; stopped");
            EXIT_FORCED_SHUTDOWN
        }
        ExitReason::VmmError(why) => {
            log_line!("error: {why}");
            EXIT_VMM_ERROR
        }
    })
}

fn main() {
    start_instant();
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            log_line!("error: {e:#}");
            EXIT_VMM_ERROR
        }
    };
    std::process::exit(code);
}
