//! The host processes of one VM, shared by the backends: daemons first, the hypervisor last.

use std::time::Duration;

use super::{HypervisorError, ProcessInfo};
use crate::process::Helper;

/// A VM's helper processes in start order; stopped in reverse.
#[derive(Debug, Default)]
pub(super) struct VmProcesses {
    helpers: Vec<Helper>,
}

impl VmProcesses {
    /// Adds a started process; returns it.
    pub(super) fn push(&mut self, helper: Helper) -> &mut Helper {
        self.helpers.push(helper);
        let last = self.helpers.len() - 1;
        &mut self.helpers[last]
    }

    /// The started processes, in start order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Helper> {
        self.helpers.iter_mut()
    }

    /// If any has exited: which, how, and the end of its log. The hypervisor (started last)
    /// is asked first: when it ends, the daemons follow.
    pub(super) fn check_exited(&mut self) -> Option<HypervisorError> {
        self.helpers.iter_mut().rev().find_map(|helper| {
            helper
                .try_exited()
                .map(|status| HypervisorError::ExitedEarly {
                    name: helper.name(),
                    status,
                    log: helper.log_tail(5),
                })
        })
    }

    /// [`Self::check_exited`] after giving the hypervisor up to `limit` to end: a daemon
    /// can notice the VM's end before the hypervisor process is gone, and the error should
    /// name the hypervisor's reason.
    pub(super) async fn exit_error(&mut self, limit: Duration) -> Option<HypervisorError> {
        if let Some(hypervisor) = self.helpers.last_mut() {
            let _ = tokio::time::timeout(limit, hypervisor.wait()).await;
        }
        self.check_exited()
    }

    /// Stops them all, last started first. The process named `hypervisor` gets `grace` to
    /// end by itself; the daemons hold no state worth waiting for once the VM is gone.
    pub(super) async fn stop(&mut self, hypervisor: &str, grace: Duration) {
        while let Some(mut helper) = self.helpers.pop() {
            let grace = if helper.name() == hypervisor {
                grace
            } else {
                Duration::ZERO
            };
            let status = helper.stop(grace).await;
            tracing::debug!(name = helper.name(), %status, "stopped");
        }
    }

    /// Kills and reaps them all at once (each helper does so as it drops).
    pub(super) fn kill_now(&mut self) {
        while self.helpers.pop().is_some() {}
    }

    /// Name and pid of each.
    pub(super) fn infos(&self) -> Vec<ProcessInfo> {
        self.helpers
            .iter()
            .map(|h| ProcessInfo {
                name: h.name().to_string(),
                pid: h.pid(),
            })
            .collect()
    }
}
