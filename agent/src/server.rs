//! Serving the agent protocol: the listener, the ttrpc server and the way it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runv_agent_protocol::{agent_ttrpc, AGENT_VSOCK_PORT};
use tokio::signal::unix::{signal, SignalKind};
use ttrpc::r#async::Server;

use crate::init;
use crate::reaper::Reaper;
use crate::rpc::AgentService;
use crate::sandbox::{Mode, Sandbox};

/// Delay between the Shutdown reply and the power-off, so the reply reaches the host.
const REPLY_FLUSH_DELAY: Duration = Duration::from_millis(100);

/// How to serve.
pub struct ServeOptions {
    pub mode: Mode,
    /// `vsock://-1:1024` in the guest, `unix:///path` in dev mode.
    pub address: String,
    pub cgroup_root: PathBuf,
    /// Do the PID 1 system setup (pts, shm, cgroup2, lo...) once the listener is bound.
    pub system_setup: bool,
}

/// Tells the host the agent serves: a vsock connection to the host (CID 2) on
/// AGENT_READY_PORT carrying AGENT_READY_LINE. A host that does not listen there polls
/// instead, so a failure is only logged.
fn notify_ready() {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    use runv_agent_protocol::{AGENT_READY_LINE, AGENT_READY_PORT};

    const HOST_CID: u32 = 2;
    let result = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, AGENT_READY_PORT))?;
        Ok(fd)
    })
    .map_err(std::io::Error::from)
    .and_then(|fd| std::fs::File::from(fd).write_all(AGENT_READY_LINE));
    match result {
        Ok(()) => tracing::debug!(port = AGENT_READY_PORT, "host notified"),
        Err(err) => tracing::warn!(%err, port = AGENT_READY_PORT, "cannot notify the host"),
    }
}

/// The address the agent listens on in the guest.
pub fn vsock_address() -> String {
    format!("vsock://-1:{AGENT_VSOCK_PORT}")
}

/// Serves until Shutdown (dev mode: or SIGTERM/SIGINT). Returns the exit code; in PID 1
/// mode it does not return.
pub async fn serve(options: ServeOptions) -> i32 {
    let server = match bind(&options).await {
        Some(server) => server,
        None => return 1,
    };
    tracing::debug!(address = %options.address, "listening");
    if options.mode == Mode::Dev {
        become_subreaper();
    }
    let reaper = match Reaper::start() {
        Ok(reaper) => reaper,
        Err(err) => {
            tracing::error!(%err, "cannot watch SIGCHLD");
            return 1;
        }
    };
    // Requests other than Check wait for the rest of the system setup, which runs while
    // the server already answers.
    let (system_ready, ready_rx) = tokio::sync::watch::channel(!options.system_setup);
    let sandbox = Arc::new(Sandbox::new(
        options.mode,
        reaper,
        options.cgroup_root.clone(),
        ready_rx,
    ));
    let service = agent_ttrpc::create_agent(Arc::new(AgentService::new(Arc::clone(&sandbox))));
    let mut server = server.register_service(service);
    if let Err(err) = server.start().await {
        tracing::error!(%err, "cannot start the ttrpc server");
        return 1;
    }
    tracing::info!(address = %options.address, cgroup_root = %options.cgroup_root.display(), "runv-agent serving");
    if options.mode == Mode::Pid1 {
        tokio::task::spawn_blocking(notify_ready);
    }
    if options.system_setup {
        if let Err(err) = tokio::task::spawn_blocking(init::late).await {
            tracing::error!(%err, "system setup task failed");
        }
        system_ready.send_replace(true);
        tracing::info!("system ready");
    }

    match options.mode {
        Mode::Pid1 => std::future::pending::<()>().await,
        Mode::Dev => wait_for_stop(&sandbox).await,
    }
    let _ = server.shutdown().await;
    if let Some(path) = options.address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("runv-agent stopped");
    0
}

/// Binds the listener; as PID 1 it retries until it works (the guest is useless without
/// it, and PID 1 must not exit).
async fn bind(options: &ServeOptions) -> Option<Server> {
    if let Some(path) = options.address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    loop {
        match Server::new().bind(&options.address) {
            Ok(server) => return Some(server),
            Err(err) if options.mode == Mode::Pid1 => {
                tracing::error!(address = %options.address, %err, "cannot listen; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => {
                tracing::error!(address = %options.address, %err, "cannot listen");
                return None;
            }
        }
    }
}

fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes plain integers only.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if ret != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot become a child subreaper");
    }
}

async fn wait_for_stop(sandbox: &Sandbox) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        sandbox.stopped.notified().await;
        return;
    };
    tokio::select! {
        _ = sandbox.stopped.notified() => {}
        _ = term.recv() => {
            tracing::info!("SIGTERM: removing every container");
            sandbox.remove_all().await;
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: removing every container");
            sandbox.remove_all().await;
        }
    }
}

/// After the Shutdown reply: powers the VM off (PID 1) or stops serving (dev mode).
pub fn power_off_after_reply(sandbox: Arc<Sandbox>) {
    tokio::spawn(async move {
        tokio::time::sleep(REPLY_FLUSH_DELAY).await;
        match sandbox.mode() {
            Mode::Pid1 => {
                // With reboot=t and -no-reboot on the hypervisor, a reboot ends the VM.
                let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
                tracing::error!(?err, "reboot failed");
            }
            Mode::Dev => sandbox.stopped.notify_one(),
        }
    });
}
