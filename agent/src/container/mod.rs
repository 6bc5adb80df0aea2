//! Containers: creation, start, signals, stdio and removal, and the code that runs as a
//! container's init process.

mod capabilities;
pub mod cgroup;
mod channel;
mod clone;
pub mod create;
mod devices;
pub mod init_process;
mod kill;
mod lookup;
mod mounts;
mod process_attrs;
pub mod spec;
mod start;
pub mod stdio;
pub mod sync;

use std::sync::Mutex;

use nix::unistd::Pid;

use crate::reaper::{ExitReceiver, ExitStatus};
use cgroup::Cgroup;
use channel::InitChannel;
use stdio::Stdio;

/// Where a container is in its life.
enum Lifecycle {
    /// The init process waits for the start message on this channel.
    Created(InitChannel),
    /// StartContainer is under way.
    Starting,
    /// The init process has exec'd the container's process (or failed to).
    Started,
}

/// One container of the sandbox.
pub struct Container {
    pub id: String,
    /// The init process in the guest's root pid namespace.
    pub pid: Pid,
    exit: ExitReceiver,
    pub stdio: Stdio,
    cgroup: Cgroup,
    lifecycle: Mutex<Lifecycle>,
}

impl Container {
    /// The init process's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the init process has exited.
    pub async fn wait(&self) -> ExitStatus {
        crate::reaper::wait_exit(self.exit.clone()).await
    }

    fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
