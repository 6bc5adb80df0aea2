//! Reaps every child of the agent and hands exit statuses to whoever waits for them.
//!
//! The agent is PID 1 in the guest (or a child subreaper in dev mode), so orphans of every
//! container end up as its children. A single task calls `waitpid(-1)` on each SIGCHLD; no
//! other code in the agent may wait for children.
//!
//! Registration race: a child can exit before its pid is known. `spawn` holds the registry
//! lock across the fork-like call and the insertion, and the reaper looks pids up under the
//! same lock, so a status is never matched against a registry that lacks its pid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended, in the shape the protocol reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + N when killed by signal N.
    pub code: i32,
    /// The signal that killed the process, 0 when it exited.
    pub signal: i32,
}

impl ExitStatus {
    /// Converts a wait status; `None` for statuses that are not an end (stopped, continued).
    pub fn from_wait_status(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self { code, signal: 0 }),
            WaitStatus::Signaled(_, sig, _) => {
                let signal = sig as i32;
                Some(Self {
                    code: 128 + signal,
                    signal,
                })
            }
            _ => None,
        }
    }
}

/// The receiving side of one process's exit: `None` while it runs.
pub type ExitReceiver = watch::Receiver<Option<ExitStatus>>;

/// The registry of children whose exit someone cares about.
#[derive(Default)]
pub struct Reaper {
    children: Mutex<HashMap<i32, watch::Sender<Option<ExitStatus>>>>,
}

impl Reaper {
    /// Creates the reaper and starts its task. Call before the first child is created.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Self::default());
        let task_reaper = Arc::clone(&reaper);
        tokio::spawn(async move {
            loop {
                task_reaper.reap_all();
                if sigchld.recv().await.is_none() {
                    tracing::error!("SIGCHLD stream ended; children are no longer reaped");
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Runs `create` (a fork or clone) with the registry locked and registers the new pid.
    pub fn spawn<E>(
        &self,
        create: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, ExitReceiver), E> {
        let mut children = self.lock();
        let pid = create()?;
        let (tx, rx) = watch::channel(None);
        children.insert(pid.as_raw(), tx);
        Ok((pid, rx))
    }

    /// Collects every child that has ended.
    fn reap_all(&self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(status) => self.deliver(status),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => return,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn deliver(&self, status: WaitStatus) {
        let (Some(pid), Some(exit)) = (status.pid(), ExitStatus::from_wait_status(status)) else {
            return;
        };
        match self.lock().remove(&pid.as_raw()) {
            Some(tx) => {
                tracing::debug!(pid = pid.as_raw(), ?exit, "process exited");
                tx.send_replace(Some(exit));
            }
            None => tracing::debug!(pid = pid.as_raw(), ?exit, "reaped an orphan"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, watch::Sender<Option<ExitStatus>>>> {
        // A panic while holding this lock leaves the map consistent: keep going.
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits until the process behind `rx` has exited.
pub async fn wait_exit(mut rx: ExitReceiver) -> ExitStatus {
    loop {
        if let Some(status) = *rx.borrow_and_update() {
            return status;
        }
        if rx.changed().await.is_err() {
            // The sender is only dropped after sending the status.
            if let Some(status) = *rx.borrow() {
                return status;
            }
            return ExitStatus {
                code: 255,
                signal: 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_code_is_kept() {
        let status = WaitStatus::Exited(Pid::from_raw(5), 7);
        assert_eq!(
            ExitStatus::from_wait_status(status),
            Some(ExitStatus { code: 7, signal: 0 })
        );
    }

    #[test]
    fn signal_death_is_128_plus_n() {
        let status = WaitStatus::Signaled(Pid::from_raw(5), Signal::SIGKILL, false);
        assert_eq!(
            ExitStatus::from_wait_status(status),
            Some(ExitStatus {
                code: 137,
                signal: 9
            })
        );
        let status = WaitStatus::Signaled(Pid::from_raw(5), Signal::SIGTERM, true);
        assert_eq!(
            ExitStatus::from_wait_status(status).map(|s| s.code),
            Some(143)
        );
    }

    #[test]
    fn stops_are_not_exits() {
        let status = WaitStatus::Stopped(Pid::from_raw(5), Signal::SIGSTOP);
        assert_eq!(ExitStatus::from_wait_status(status), None);
    }
}
