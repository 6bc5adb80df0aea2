//! Containers: creation, start, signals, stdio and removal, and the code that runs as a
//! container's init process.

pub mod block_rootfs;
mod bpf;
mod capabilities;
pub mod cgroup;
mod channel;
mod clone;
pub mod create;
mod device_rules;
mod devices;
pub mod exec;
pub mod init_process;
mod kill;
mod lookup;
mod mounts;
pub mod namespaces;
mod process_attrs;
mod resources;
pub mod seccomp;
pub mod spec;
mod start;
pub mod stats;
pub mod stdio;
pub mod sync;
pub mod userns;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::AgentError;
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
    execs: Mutex<exec::Execs>,
    /// The cgroup's OOM kill count already reported.
    pub oom_kills_seen: AtomicU64,
    /// `linux.seccomp`, for exec processes.
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
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

    /// Every process in the container's cgroup, with its exec id where it has one.
    pub fn processes(&self) -> Result<Vec<(Pid, String)>, AgentError> {
        let execs = self.exec_pids();
        let pids = self
            .cgroup
            .procs()
            .map_err(|source| self.cgroup_error(source))?;
        Ok(pids
            .into_iter()
            .map(|pid| {
                let exec_id = execs.get(&pid.as_raw()).cloned().unwrap_or_default();
                (pid, exec_id)
            })
            .collect())
    }

    /// The cgroup's resource figures.
    pub fn stats(&self) -> runv_agent_protocol::agent::StatsContainerResponse {
        stats::read_stats(self.cgroup.path())
    }

    /// The cgroup's OOM kill count.
    pub fn oom_kills(&self) -> u64 {
        stats::oom_kills(self.cgroup.path())
    }

    /// Freezes (`true`) or thaws every process of the container.
    pub async fn freeze(&self, frozen: bool) -> Result<(), AgentError> {
        if self.exit_status().is_some() {
            return Err(self.wrong_state("has exited"));
        }
        self.cgroup
            .freeze(frozen)
            .await
            .map_err(|source| self.cgroup_error(source))
    }

    /// Applies new limits.
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<(), AgentError> {
        self.cgroup
            .apply(resources)
            .map_err(|source| self.cgroup_error(source))
    }

    fn cgroup_error(&self, source: cgroup::CgroupError) -> AgentError {
        AgentError::Cgroup {
            id: self.id.clone(),
            source,
        }
    }

    fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A process of a container: its init process or an exec process.
#[derive(Clone)]
pub enum Process {
    Init(Arc<Container>),
    Exec(Arc<Container>, Arc<exec::ExecProcess>),
}

impl Process {
    pub fn stdio(&self) -> &Stdio {
        match self {
            Self::Init(c) => &c.stdio,
            Self::Exec(_, e) => &e.stdio,
        }
    }

    pub async fn wait(&self) -> ExitStatus {
        match self {
            Self::Init(c) => c.wait().await,
            Self::Exec(_, e) => e.wait().await,
        }
    }

    /// Signals the process, or with `all` every process of the container.
    pub fn signal(&self, signal: Signal, all: bool) -> Result<(), AgentError> {
        match self {
            Self::Init(c) => c.signal(signal, all),
            Self::Exec(c, _) if all => c.signal(signal, true),
            Self::Exec(c, e) => e.signal(&c.id, signal),
        }
    }

    /// Signal 0: succeeds while the process has not exited.
    pub fn probe(&self) -> Result<(), AgentError> {
        match self {
            Self::Init(c) => c.probe(),
            Self::Exec(c, e) => match e.exit_status() {
                Some(_) => Err(c.wrong_state("process has exited")),
                None => Ok(()),
            },
        }
    }
}
