//! runv-agent: PID 1 of the runv guest VM. It serves the agent protocol on vsock port 1024
//! and runs the OCI containers of the sandbox. `--listen` runs it on a host for tests.

mod cli;
mod container;
mod error;
mod init;
mod logging;
mod network;
mod reaper;
mod rpc;
mod sandbox;
mod server;

use cli::{Args, CONTAINER_EXEC_ARG, CONTAINER_INIT_ARG};
use sandbox::Mode;
use server::ServeOptions;

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.get(1).map(String::as_str) == Some(CONTAINER_INIT_ARG) {
        container::init_process::main();
    }
    if argv.get(1).map(String::as_str) == Some(CONTAINER_EXEC_ARG) {
        container::init_process::exec_main();
    }
    let args = match Args::parse(argv.get(1..).unwrap_or_default()) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("runv-agent: {err}");
            eprintln!("usage: runv-agent [--listen unix:///PATH] [--cgroup-root DIR] [--no-init] [--log LEVEL]");
            std::process::exit(2);
        }
    };
    let pid1 = std::process::id() == 1;
    let mode = match (&args.listen, pid1) {
        (Some(_), _) => Mode::Dev,
        (None, true) => Mode::Pid1,
        (None, false) => {
            eprintln!("runv-agent: not PID 1; use --listen unix:///PATH to run on a host");
            std::process::exit(2);
        }
    };
    let system_setup = mode == Mode::Pid1 && !args.no_init;
    if system_setup {
        init::early();
    }

    let level = args
        .log
        .as_deref()
        .and_then(logging::parse_level)
        .or_else(|| {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            logging::level_from_cmdline(&cmdline)
        })
        .unwrap_or(tracing::Level::INFO);
    logging::init(level, mode == Mode::Pid1);
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));

    let options = ServeOptions {
        mode,
        address: args.listen.clone().unwrap_or_else(server::vsock_address),
        cgroup_root: args
            .cgroup_root
            .clone()
            .unwrap_or_else(container::cgroup::default_root),
        system_setup,
    };
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(server::serve(options)),
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            1
        }
    };
    if mode == Mode::Pid1 {
        // PID 1 exiting panics the kernel: stay, the host will kill the VM.
        tracing::error!("agent stopped serving; idling");
        loop {
            std::thread::park();
        }
    }
    std::process::exit(code);
}
