//! The shim v2 process protocol: `start` (launch the serving shim for a pod and print its
//! address), `delete` (clean up after a shim that died), and serving the Task service.
//!
//! containerd 1.6 reads the bare address from `start` and calls `containerd.task.v2.Task`;
//! containerd 2 reads the same address and calls `containerd.task.v3.Task`, whose messages
//! are the same. The service answers under both names.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim_async::{create_task, Task};
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Flags;
use runv_runtime::config::Config;
use runv_runtime::state::SandboxDir;
use tokio::io::AsyncReadExt;

use crate::events::{timestamp, Events};
use crate::task::TaskService;

/// Errors of the process protocol (reported on stderr, which containerd logs).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Bad command line.
    #[error("Parse arguments: {0}")]
    Args(String),
    /// A missing environment variable containerd sets.
    #[error("Environment variable {0} is not set")]
    Env(&'static str),
    /// An I/O step failed.
    #[error("{op}")]
    Io {
        /// What the shim was doing.
        op: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ttrpc server or publisher failed.
    #[error("{0}")]
    Ttrpc(String),
    /// The sandbox state could not be read or removed.
    #[error(transparent)]
    State(#[from] runv_runtime::state::StateError),
}

fn io_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProtocolError {
    let op = op.into();
    move |source| ProtocolError::Io { op, source }
}

/// The runtime id containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.runv.v2";

/// The parsed command line.
pub fn parse_flags(args: &[String]) -> Result<Flags, ProtocolError> {
    containerd_shim::parse(args).map_err(|e| ProtocolError::Args(e.to_string()))
}

/// The pod a container belongs to: the CRI sandbox annotation of its bundle, else itself.
fn grouping(id: &str, bundle: &Path) -> String {
    crate::spec::load(bundle)
        .ok()
        .as_ref()
        .and_then(crate::spec::sandbox_id)
        .unwrap_or_else(|| id.to_string())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// `start`: reuses the pod's serving shim if one answers at the pod's address, or starts
/// one; prints the address for containerd.
pub async fn start(flags: &Flags) -> Result<String, ProtocolError> {
    let cwd = std::env::current_dir().map_err(io_err("Get the bundle directory"))?;
    let group = grouping(&flags.id, &cwd);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    if tokio::net::UnixStream::connect(socket_path(&address))
        .await
        .is_ok()
    {
        write_address_file(&address)?;
        return Ok(address);
    }
    let _ = std::fs::remove_file(socket_path(&address));
    let exe = std::env::current_exe().map_err(io_err("Find the shim binary"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.current_dir(&cwd)
        .args(["-namespace", &flags.namespace, "-id", &group])
        .args(["-address", &flags.address, "-socket", &address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    // A process group of its own: signals to `start`'s group do not reach the server.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(io_err("Start the serving shim"))?;
    // The server closes its stdout once it listens (or when it fails).
    let mut out = child.stdout.take().ok_or(ProtocolError::Io {
        op: "Read the serving shim's output".into(),
        source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
    })?;
    let mut text = String::new();
    let _ = out.read_to_string(&mut text).await;
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            return Err(ProtocolError::Ttrpc(format!(
                "the serving shim exited with {status}: {}",
                text.trim()
            )));
        }
    }
    write_address_file(&address)?;
    Ok(address)
}

fn write_address_file(address: &str) -> Result<(), ProtocolError> {
    std::fs::write("address", address).map_err(io_err("Write the address file"))
}

/// `delete`: containerd's cleanup after a shim that is gone. Its helpers died with it
/// (PR_SET_PDEATHSIG) and its mounts with its mount namespace; what is left is to make sure
/// of the processes and remove the sandbox's state directory and the dead shim's socket.
pub async fn delete(flags: &Flags) -> Result<Vec<u8>, ProtocolError> {
    let cwd = std::env::current_dir().map_err(io_err("Get the bundle directory"))?;
    let group = grouping(&flags.id, &cwd);
    if group == flags.id {
        cleanup_sandbox(&group)?;
        // The killed shim's host cgroup is empty now that its processes are gone.
        let cgroups_path = crate::spec::load(&cwd).ok().and_then(|s| {
            s.linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.display().to_string())
        });
        if let Some(path) = cgroups_path.filter(|p| !p.is_empty()) {
            if let Err(e) = runv_runtime::host_cgroup::remove(&path) {
                tracing::warn!(path, error = %e, "remove the host cgroup");
            }
        }
        // The socket of a shim that was killed stays behind; nothing answers on it any more.
        let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
        let path = socket_path(&address);
        if tokio::net::UnixStream::connect(path).await.is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let response = DeleteResponse {
        pid: 0,
        exit_status: 128 + 9,
        exited_at: Some(timestamp(SystemTime::now())).into(),
        ..Default::default()
    };
    response
        .write_to_bytes()
        .map_err(|e| ProtocolError::Ttrpc(e.to_string()))
}

fn cleanup_sandbox(id: &str) -> Result<(), ProtocolError> {
    let config = Config::load().map(|(c, _)| c).unwrap_or_default();
    let Ok(dir) = SandboxDir::new(&config.runtime.state_dir, id) else {
        return Ok(());
    };
    if !dir.path().exists() || dir.owner_alive() {
        return Ok(());
    }
    if let Ok(state) = dir.load() {
        for p in &state.processes {
            kill_if_named(p.pid, &p.name);
        }
    }
    Ok(dir.remove()?)
}

/// Kills `pid` if it still is the helper of that name (not a reused pid).
fn kill_if_named(pid: u32, name: &str) {
    let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let program = comm.split('\0').next().unwrap_or_default();
    let base = Path::new(program)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !base.starts_with(name.split('-').next().unwrap_or(name)) {
        return;
    }
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Serves the Task service on `flags.socket` until the last container is gone and
/// containerd asks for shutdown.
pub async fn serve(flags: &Flags) -> Result<(), ProtocolError> {
    if let Err(e) = crate::logging::init(flags.debug, &flags.namespace, &flags.id) {
        eprintln!("{RUNTIME_ID}: logger: {e}");
    }
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|_| ProtocolError::Env("TTRPC_ADDRESS"))?;
    let publisher = RemotePublisher::new(&ttrpc_address)
        .await
        .map_err(|e| ProtocolError::Ttrpc(format!("Connect to containerd's events: {e}")))?;
    let exit = Arc::new(ExitSignal::default());
    let service = TaskService::new(
        flags.id.clone(),
        Events::new(publisher, flags.namespace.clone()),
        exit.clone(),
    );
    let service: Arc<dyn Task + Send + Sync> = Arc::new(service);
    let mut services = create_task(service.clone());
    for (name, svc) in create_task(service) {
        services.insert(name.replace(".v3.", ".v2."), svc);
    }

    let path = socket_path(&flags.socket).to_string();
    if let Some(parent) = Path::new(&path).parent() {
        std::fs::create_dir_all(parent).map_err(io_err(format!("Create {}", parent.display())))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(io_err(format!("Listen on {path}")))?;
    let listener = Listener::try_from(listener).map_err(io_err("Make the ttrpc listener"))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| ProtocolError::Ttrpc(format!("Start the ttrpc server: {e}")))?;
    signal_started();

    exit.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Closes stdout, which `start` reads until its end: the server is listening.
fn signal_started() {
    // SAFETY: dup2 over our own stdout with our own stderr (or /dev/null there); both
    // descriptors are open and nothing else in this process writes to stdout.
    let rc = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    if rc < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "close stdout");
    }
}
