//! SignalProcess and RemoveContainer.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};

use super::Container;
use crate::error::AgentError;

impl Container {
    /// Signals the init process, or with `all` every process in the container's cgroup.
    pub fn signal(&self, signal: Signal, all: bool) -> Result<(), AgentError> {
        if all {
            return self
                .cgroup
                .signal_all(signal)
                .map_err(|source| AgentError::Cgroup {
                    id: self.id.clone(),
                    source,
                });
        }
        // The pid stays ours until it is reaped, and it is reaped only together with the
        // status being recorded: checking the status first rules out signalling a reused pid.
        if self.exit_status().is_some() {
            return Err(self.wrong_state("process has exited"));
        }
        match kill(self.pid, signal) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(self.wrong_state("process has exited")),
            Err(err) => Err(AgentError::os(
                format!("container {:?}: kill {signal}", self.id),
                err,
            )),
        }
    }

    /// Signal 0: succeeds while the init process has not exited.
    pub fn probe(&self) -> Result<(), AgentError> {
        match self.exit_status() {
            Some(_) => Err(self.wrong_state("process has exited")),
            None => Ok(()),
        }
    }

    /// Stops every process of the container (SIGTERM, then SIGKILL after `grace`), waits
    /// for the init process and removes the cgroup.
    pub async fn destroy(&self, grace: Duration) -> Result<(), AgentError> {
        if self.exit_status().is_none() && !grace.is_zero() {
            self.signal_quietly(Signal::SIGTERM);
            let _ = tokio::time::timeout(grace, self.wait()).await;
        }
        if self.exit_status().is_none() {
            self.signal_quietly(Signal::SIGKILL);
        }
        self.wait().await;
        // Processes that left the pid namespace's reach (none should) go with the cgroup.
        let _ = self.cgroup.signal_all(Signal::SIGKILL);
        self.cgroup
            .remove()
            .await
            .map_err(|source| AgentError::Cgroup {
                id: self.id.clone(),
                source,
            })
    }

    fn signal_quietly(&self, signal: Signal) {
        if let Err(err) = self.cgroup.signal_all(signal) {
            tracing::debug!(container = %self.id, %err, "signal cgroup");
        }
        if self.exit_status().is_none() {
            let _ = kill(self.pid, signal);
        }
    }
}
