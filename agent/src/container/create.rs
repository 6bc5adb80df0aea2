//! CreateContainer: from a validated spec to an init process waiting for its start.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use oci_spec::runtime::Spec;

use super::cgroup::{Cgroup, CgroupManager};
use super::channel::InitChannel;
use super::clone::{clone_child, CloneSpec, InitFds};
use super::stdio::{self, Stdio};
use super::sync::{FromInit, InitConfig, InitFailure, ToInit};
use super::{namespaces, spec, Container, Lifecycle};
use crate::cli::CONTAINER_INIT_ARG;
use crate::error::AgentError;
use crate::reaper::{self, ExitReceiver, Reaper};

/// What creating a container needs from the agent.
pub struct CreateRequest {
    pub container_id: String,
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub readonly_root: bool,
}

/// Creates the container; on failure nothing of it is left.
pub async fn create(
    reaper: &Reaper,
    cgroups: &CgroupManager,
    req: CreateRequest,
) -> Result<Container, AgentError> {
    let id = req.container_id.clone();
    let seccomp = req.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    // Checked before anything is made, so a bad namespace leaves nothing behind.
    let plan = namespaces::plan(&req.spec)?;
    let cgroup = cgroups.create(&id).map_err(|source| AgentError::Cgroup {
        id: id.clone(),
        source,
    })?;
    let result = create_in_cgroup(reaper, &cgroup, req, plan).await;
    match result {
        Ok(parts) => Ok(Container {
            id,
            pid: parts.pid,
            exit: parts.exit,
            stdio: parts.stdio,
            cgroup,
            lifecycle: Mutex::new(Lifecycle::Created(parts.channel)),
            execs: Mutex::default(),
            oom_kills_seen: std::sync::atomic::AtomicU64::new(0),
            seccomp,
        }),
        Err(err) => {
            if let Err(rm) = cgroup.remove().await {
                tracing::warn!(container = %id, %rm, "cleanup of failed container");
            }
            Err(err)
        }
    }
}

struct Parts {
    pid: nix::unistd::Pid,
    exit: ExitReceiver,
    stdio: Stdio,
    channel: InitChannel,
}

async fn create_in_cgroup(
    reaper: &Reaper,
    cgroup: &Cgroup,
    req: CreateRequest,
    plan: namespaces::Plan,
) -> Result<Parts, AgentError> {
    let id = req.container_id.clone();
    let os = |what: &'static str| {
        let id = id.clone();
        move |e| AgentError::os(format!("container {id:?}: {what}"), e)
    };
    // Limits and the device program are in place before the init process joins.
    let resources = req
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref());
    cgroup
        .setup(resources)
        .map_err(|source| AgentError::Cgroup {
            id: id.clone(),
            source,
        })?;

    let ChildIo {
        child_stdio,
        pipe_ends,
        agent_sock,
        child_sock: init_sock,
    } = ChildIo::new(spec::terminal(&req.spec)).map_err(|(what, e)| os(what)(e))?;

    let pid_ns = match &plan.join_pid {
        Some(path) => Some(std::fs::File::open(path).map_err(|e| {
            AgentError::os(
                format!("container {id:?}: open pid namespace {}", path.display()),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?),
        None => None,
    };
    let (pid, exit) = clone_child(
        reaper,
        InitFds {
            stdio: [&child_stdio[0], &child_stdio[1], &child_stdio[2]],
            sync: &init_sock,
        },
        CloneSpec {
            mode: CONTAINER_INIT_ARG,
            flags: plan.clone_flags,
            pid_ns: pid_ns.as_ref(),
            wait_before_exec: plan.id_maps.is_some(),
        },
    )
    .map_err(os("clone init process"))?;
    drop(child_stdio);
    drop(init_sock);
    tracing::debug!(container = %id, pid = pid.as_raw(), "init process cloned");

    let prepared = async {
        if let Some(maps) = &plan.id_maps {
            // Before anything else on the socket: the init waits for this to exec.
            super::userns::write_maps(pid, maps)
                .and_then(|()| {
                    nix::unistd::write(&agent_sock, &[0])
                        .map(drop)
                        .map_err(|e| ("send the go-ahead after the id mappings".into(), e))
                })
                .map_err(|(what, e)| AgentError::os(format!("container {id:?}: {what}"), e))?;
        }
        let mut channel = InitChannel::new(agent_sock).map_err(|e| AgentError::Stdio {
            id: id.clone(),
            source: e.into(),
        })?;
        cgroup
            .add_process(pid)
            .map_err(|source| AgentError::Cgroup {
                id: id.clone(),
                source,
            })?;
        let config = InitConfig {
            container_id: id.clone(),
            spec: req.spec,
            rootfs: req.rootfs,
            readonly_root: req.readonly_root,
            join: plan.join,
            unshare: plan.unshare.bits(),
            new_cgroup: plan.new_cgroup,
            cgroup_dir: Some(cgroup.path().to_path_buf()),
        };
        let sync_err = |source| AgentError::Sync {
            id: id.clone(),
            source,
        };
        channel
            .send(&ToInit::Config(Box::new(config)))
            .await
            .map_err(sync_err)?;
        let mut master = None;
        loop {
            match channel.recv().await.map_err(sync_err)? {
                Some(FromInit::Pty) => master = channel.take_fd(),
                Some(FromInit::Ready { warnings }) => {
                    for warning in warnings {
                        tracing::warn!(container = %id, "{warning}");
                    }
                    break;
                }
                Some(FromInit::Failed(failure)) => {
                    return Err(AgentError::Init {
                        id: id.clone(),
                        failure,
                    })
                }
                None => {
                    let status = reaper::wait_exit(exit.clone()).await;
                    let failure = InitFailure::internal(format!(
                        "init process exited with status {} before it was ready",
                        status.code
                    ));
                    return Err(AgentError::Init {
                        id: id.clone(),
                        failure,
                    });
                }
            }
        }
        let stdio = agent_stdio(&id, "init process", pipe_ends, master)?;
        Ok((channel, stdio))
    }
    .await;

    match prepared {
        Ok((channel, stdio)) => Ok(Parts {
            pid,
            exit,
            stdio,
            channel,
        }),
        Err(err) => {
            let _ = kill(pid, Signal::SIGKILL);
            reaper::wait_exit(exit).await;
            Err(err)
        }
    }
}

/// What a cloned init or exec process is wired to: its stdio (the child ends of pipes, or
/// /dev/null when it makes its own terminal), the agent's pipe ends, and the sync socket.
pub(super) struct ChildIo {
    pub child_stdio: [OwnedFd; 3],
    pub pipe_ends: Option<stdio::PipeEnds>,
    pub agent_sock: OwnedFd,
    pub child_sock: OwnedFd,
}

impl ChildIo {
    /// Pipes, or /dev/null for a process with a terminal, and the sync socket pair; on
    /// failure, what could not be made.
    pub fn new(terminal: bool) -> Result<Self, (&'static str, nix::errno::Errno)> {
        let (child_stdio, pipe_ends) = if terminal {
            (null_stdio().map_err(|e| ("open /dev/null", e))?, None)
        } else {
            let (child, ends) = stdio::pipes().map_err(|e| ("stdio pipes", e))?;
            (child, Some(ends))
        };
        let (agent_sock, child_sock) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| ("sync socket", e))?;
        Ok(Self {
            child_stdio,
            pipe_ends,
            agent_sock,
            child_sock,
        })
    }
}

/// The agent's side of a process's stdio: its pipes, or the pty master it sent.
pub(super) fn agent_stdio(
    id: &str,
    what: &str,
    pipe_ends: Option<stdio::PipeEnds>,
    master: Option<OwnedFd>,
) -> Result<Stdio, AgentError> {
    match (pipe_ends, master) {
        (Some(ends), _) => Stdio::from_pipes(ends),
        (None, Some(master)) => Stdio::from_pty(master),
        (None, None) => {
            return Err(AgentError::Init {
                id: id.to_string(),
                failure: InitFailure::internal(format!("no terminal from the {what}")),
            })
        }
    }
    .map_err(|e| AgentError::Stdio {
        id: id.to_string(),
        source: e.into(),
    })
}

fn null_stdio() -> Result<[OwnedFd; 3], nix::errno::Errno> {
    let open = || -> Result<OwnedFd, nix::errno::Errno> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    };
    Ok([open()?, open()?, open()?])
}
