//! `runv run`: a new sandbox VM, one container in it, stdio attached, its exit status.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use runv_runtime::agent::AgentClient;
use runv_runtime::block_rootfs::BootContainer;
use runv_runtime::bundle;
use runv_runtime::config::{Config, HypervisorKind};
use runv_runtime::rootfs::{self, RootfsSource};
use runv_runtime::sandbox::{Sandbox, SandboxError, SandboxOptions};
use runv_runtime::spec::{self, ProcessOptions, SpecError};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::{error_chain, stdio, tty, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_RUNTIME_ERROR};

/// How long output may keep coming after the process exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the sandbox's state directory when the container exits (the VM always stops).
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and feed it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Root filesystem directory (used read-write, as runc does); default: the busybox root
    /// from the install, under a throwaway overlay.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Set an environment variable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User and group ids inside the container.
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    user: Option<String>,
    /// Bind-mount a host file or directory into the container, read-only with `:ro`
    /// (repeatable; both paths absolute).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volume: Vec<String>,
    /// vCPUs of the sandbox VM.
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Memory of the sandbox VM, MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// Hypervisor backend: auto, qemu or builtin.
    #[arg(long)]
    hypervisor: Option<HypervisorKind>,
    /// Sandbox id (default: random); also the container id and hostname.
    #[arg(long, value_name = "ID")]
    name: Option<String>,
    /// Run the container an OCI bundle describes: DIR/config.json and its root.path
    /// (relative to DIR unless absolute). The process comes from the spec, so a command,
    /// --rootfs, -e, -w, -u and -t are refused with it.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The pod's network namespace (e.g. /var/run/netns/NAME, made and filled by a CNI
    /// plugin): its interfaces, addresses and routes become the guest's. With --bundle, the
    /// spec's network namespace path is used when this is not given.
    #[arg(long, value_name = "PATH", conflicts_with = "net")]
    netns: Option<PathBuf>,
    /// `none`: loopback only, whatever a bundle's spec names (the default without --netns).
    #[arg(long, value_name = "MODE", value_parser = ["none"])]
    net: Option<String>,
    /// Write the phase timings of this run as JSON to FILE.
    #[arg(long, value_name = "FILE", hide = true)]
    timings: Option<PathBuf>,
    /// The command to run and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

/// Runs `runv run` to completion; returns the exit status.
pub fn main(args: RunArgs, config: Config) -> i32 {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "runv: run needs root (it creates mounts, VMs and sockets under {})",
            config.runtime.state_dir.display()
        );
        return EXIT_RUNTIME_ERROR;
    }
    // The container roots are mounted in a mount namespace of runv's own: they are invisible
    // to the host and vanish with runv and its helpers, whatever way they end.
    if let Err(e) = private_mount_namespace() {
        eprintln!("runv: create a private mount namespace: {e}");
        return EXIT_RUNTIME_ERROR;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runv: start the async runtime: {e}");
            return EXIT_RUNTIME_ERROR;
        }
    };
    runtime.block_on(run(args, config))
}

fn private_mount_namespace() -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    // Slave: host mounts still show up here, runv's never show up there.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
}

/// Phase timings of one run, offsets in seconds from the start of `runv run`.
#[derive(Debug, Default, Serialize)]
struct RunTimings {
    sandbox: runv_runtime::sandbox::Timings,
    container_created: Option<Duration>,
    container_started: Option<Duration>,
    container_exited: Option<Duration>,
    teardown_done: Option<Duration>,
}

/// The options that describe the process, which a bundle's spec describes instead.
fn bundle_conflicts(args: &RunArgs) -> Vec<&'static str> {
    let mut conflicts = Vec::new();
    if !args.command.is_empty() {
        conflicts.push("a command");
    }
    if args.rootfs.is_some() {
        conflicts.push("--rootfs");
    }
    if !args.env.is_empty() {
        conflicts.push("-e/--env");
    }
    if args.workdir.is_some() {
        conflicts.push("-w/--workdir");
    }
    if args.user.is_some() {
        conflicts.push("-u/--user");
    }
    if args.tty {
        conflicts.push("-t/--tty");
    }
    conflicts
}

/// The spec and root of a bundle run: everything from DIR/config.json, nothing added but
/// the terminal's size.
fn bundle_spec(dir: &std::path::Path, args: &RunArgs) -> Result<(Spec, RootfsSource), String> {
    let conflicts = bundle_conflicts(args);
    if !conflicts.is_empty() {
        return Err(format!(
            "--bundle takes the process and root from {}: drop {}",
            dir.join("config.json").display(),
            conflicts.join(", ")
        ));
    }
    let loaded = bundle::load(dir).map_err(|e| error_chain(&e))?;
    rootfs::validate(&loaded.rootfs)
        .map_err(|e| format!("{}: root.path: {e}", dir.join("config.json").display()))?;
    let mut spec = loaded.spec;
    if let Some(process) = spec.process_mut() {
        if process.terminal() == Some(true) && process.console_size().is_none() {
            if let Some((rows, cols)) = tty::local_window_size() {
                let size = oci_spec::runtime::BoxBuilder::default()
                    .height(u32::from(rows))
                    .width(u32::from(cols))
                    .build()
                    .map_err(|e| format!("process.consoleSize: {e}"))?;
                process.set_console_size(Some(size));
            }
        }
    }
    Ok((spec, RootfsSource::Bind(loaded.rootfs)))
}

async fn run(args: RunArgs, config: Config) -> i32 {
    let start = Instant::now();
    let (mut spec, rootfs) = match &args.bundle {
        Some(dir) => match bundle_spec(dir, &args) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("runv: {e}");
                return EXIT_RUNTIME_ERROR;
            }
        },
        None => match command_line_spec(&args, &config) {
            Ok(built) => built,
            Err(code) => return code,
        },
    };
    // Volumes are checked before any VM starts: a bad one fails here, naming it.
    if let Err(e) = spec::add_volumes(&mut spec, &args.volume) {
        eprintln!("runv: {}", error_chain(&e));
        return EXIT_RUNTIME_ERROR;
    }
    if let Err(e) = runv_runtime::volumes::validate(&spec) {
        eprintln!("runv: {}", error_chain(&e));
        return EXIT_RUNTIME_ERROR;
    }
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    run_spec(args, config, spec, rootfs, terminal, start).await
}

/// The spec and root `runv run` makes from its options; the exit status on an error.
fn command_line_spec(args: &RunArgs, config: &Config) -> Result<(Spec, RootfsSource), i32> {
    let console_size = if args.tty {
        tty::local_window_size()
    } else {
        None
    };
    let opts = ProcessOptions {
        args: args.command.clone(),
        env: args.env.clone(),
        cwd: args.workdir.clone(),
        user: args.user.clone(),
        terminal: args.tty,
        console_size,
        hostname: args.name.clone(),
    };
    let spec = match spec::build(&opts) {
        Ok(spec) => spec,
        Err(e @ SpecError::NoCommand) => {
            eprintln!("runv: {e}");
            return Err(EXIT_NOT_FOUND);
        }
        Err(e) => {
            eprintln!("runv: {}", error_chain(&e));
            return Err(EXIT_RUNTIME_ERROR);
        }
    };
    let rootfs = match &args.rootfs {
        Some(dir) => RootfsSource::Bind(dir.clone()),
        None => RootfsSource::Overlay(config.runtime.default_rootfs.clone()),
    };
    if let Some(Err(e)) = rootfs.dir().map(rootfs::validate) {
        eprintln!("runv: {e}");
        return Err(EXIT_RUNTIME_ERROR);
    }
    Ok((spec, rootfs))
}

/// Boots the sandbox, runs the container of `spec` in it to its end, tears down.
async fn run_spec(
    args: RunArgs,
    config: Config,
    spec: Spec,
    rootfs: RootfsSource,
    terminal: bool,
    start: Instant,
) -> i32 {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runv: install signal handlers: {e}");
            return EXIT_RUNTIME_ERROR;
        }
    };
    // The pod's namespace is the host side of the VM's network; inside, the container
    // shares the guest's namespace, so the path does not go to the guest.
    let mut spec = spec;
    let spec_netns = take_spec_netns(&mut spec);
    let opts = SandboxOptions {
        id: args.name.clone(),
        hypervisor: args.hypervisor,
        vcpus: args.cpus,
        memory_mib: args.memory,
        first_container: Some(BootContainer {
            id: None,
            rootfs: rootfs.clone(),
        }),
        netns: if args.net.is_some() {
            None
        } else {
            args.netns.clone().or(spec_netns)
        },
    };
    // A signal while the VM boots drops the half-made sandbox, which cleans itself up.
    let create = Sandbox::create(&config, opts);
    tokio::pin!(create);
    let created = loop {
        tokio::select! {
            created = &mut create => break created,
            Some(sig) = signals.rx.recv() => {
                if sig != libc::SIGWINCH {
                    eprintln!("runv: interrupted by signal {sig} while starting the sandbox");
                    return 128 + sig;
                }
            }
        }
    };
    let mut sandbox = match created {
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("runv: {}", error_chain(&e));
            return EXIT_RUNTIME_ERROR;
        }
    };

    let mut timings = RunTimings::default();
    let code = run_container(
        &mut sandbox,
        &args,
        terminal,
        &rootfs,
        &spec,
        &mut signals,
        start,
        &mut timings,
    )
    .await;
    timings.sandbox = sandbox.timings().clone();
    sandbox.shutdown(args.rm).await;
    timings.teardown_done = Some(start.elapsed());
    if let Some(path) = &args.timings {
        let json = serde_json::to_string_pretty(&timings).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("runv: write timings to {}: {e}", path.display());
        }
    }
    code
}

/// Exit status for an error from creating or starting the container.
fn container_error_code(e: &SandboxError) -> i32 {
    match e {
        SandboxError::Agent(agent) => match agent.code() {
            Some(ttrpc::Code::NOT_FOUND) => EXIT_NOT_FOUND,
            Some(ttrpc::Code::PERMISSION_DENIED) => EXIT_NOT_EXECUTABLE,
            _ => EXIT_RUNTIME_ERROR,
        },
        _ => EXIT_RUNTIME_ERROR,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_container(
    sandbox: &mut Sandbox,
    args: &RunArgs,
    terminal: bool,
    rootfs: &RootfsSource,
    spec: &Spec,
    signals: &mut Signals,
    start: Instant,
    timings: &mut RunTimings,
) -> i32 {
    let cid = sandbox.id().to_string();
    if let Err(e) = sandbox.create_container(&cid, rootfs, spec).await {
        eprintln!("runv: {}", error_chain(&e));
        return container_error_code(&e);
    }
    timings.container_created = Some(start.elapsed());
    let agent: AgentClient = match sandbox.agent() {
        Ok(agent) => agent.clone(),
        Err(e) => {
            eprintln!("runv: {e}");
            return EXIT_RUNTIME_ERROR;
        }
    };

    // Output readers are in place before the process starts, so nothing waits on a full pipe.
    let stdout = tokio::spawn(runv_runtime::stdio::copy_output(
        agent.clone(),
        cid.clone(),
        String::new(),
        false,
        tokio::io::stdout(),
    ));
    let stderr = (!terminal).then(|| {
        tokio::spawn(runv_runtime::stdio::copy_output(
            agent.clone(),
            cid.clone(),
            String::new(),
            true,
            tokio::io::stderr(),
        ))
    });
    let raw_mode = if terminal {
        tty::RawMode::enable()
    } else {
        None
    };

    if let Err(e) = sandbox.start_container(&cid).await {
        drop(raw_mode);
        eprintln!("runv: {}", error_chain(&e));
        return container_error_code(&e);
    }
    timings.container_started = Some(start.elapsed());

    let stdin = if args.interactive {
        Some(tokio::spawn(stdio::copy_input(agent.clone(), cid.clone())))
    } else {
        if let Err(e) = agent.close_stdin(&cid, "").await {
            tracing::debug!(error = %e, "close stdin");
        }
        None
    };

    let wait = agent.wait_process(&cid, "");
    tokio::pin!(wait);
    let exit = loop {
        tokio::select! {
            exit = &mut wait => break exit,
            Some(sig) = signals.rx.recv() => {
                if sig == libc::SIGWINCH {
                    if let Some((rows, cols)) = tty::local_window_size() {
                        let _ = agent.resize_terminal(&cid, "", rows, cols).await;
                    }
                } else if let Err(e) = agent.signal_process(&cid, "", sig, false).await {
                    tracing::debug!(error = %e, sig, "forward signal");
                }
            }
        }
    };
    timings.container_exited = Some(start.elapsed());
    if let Some(stdin) = stdin {
        stdin.abort();
    }
    let code = match exit {
        Ok(exit) => exit.status,
        Err(e) => {
            drop(raw_mode);
            let reason = match sandbox.check_vm() {
                Some(vm) => format!("the sandbox VM stopped: {}", error_chain(&vm)),
                None => error_chain(&e),
            };
            eprintln!("runv: lost the container: {reason}");
            return EXIT_RUNTIME_ERROR;
        }
    };
    // The rest of the output, up to the end of both streams.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = stdout.await;
        if let Some(stderr) = stderr {
            let _ = stderr.await;
        }
    })
    .await;
    drop(raw_mode);
    if drained.is_err() {
        tracing::warn!(
            "output still open {DRAIN_TIMEOUT:?} after the process exited; dropped the rest"
        );
    }
    let _ = sandbox.record_exit(&cid, code);
    code
}

/// The signals runv passes on to the container, and SIGWINCH.
struct Signals {
    rx: mpsc::Receiver<i32>,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGWINCH,
        ] {
            let mut stream = signal(SignalKind::from_raw(sig))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Self { rx })
    }
}

/// Takes the network namespace path a spec names, if any, out of it.
fn take_spec_netns(spec: &mut Spec) -> Option<PathBuf> {
    let namespaces = spec.linux_mut().as_mut()?.namespaces_mut().as_mut()?;
    let ns = namespaces
        .iter_mut()
        .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?;
    let path = ns.path().clone().filter(|p| !p.as_os_str().is_empty());
    ns.set_path(None);
    path
}
