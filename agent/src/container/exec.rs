//! ExecProcess: another process in a running container's namespaces and cgroup.
//!
//! The agent clones `runv-agent __container-exec` into the container's pid namespace
//! (from a thread that joined it), places it in the container's cgroup and sends it the
//! process; it joins the container's other namespaces, the mount namespace last, then sets
//! up the terminal, limits, privileges and user like the init process does, and execs.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use super::channel::InitChannel;
use super::clone::{clone_child, CloneSpec, InitFds};
use super::create::{agent_stdio, ChildIo};
use super::namespaces::Join;
use super::stdio::Stdio;
use super::sync::{ExecConfig, FromInit, InitFailure, ToInit};
use super::{Container, Lifecycle};
use crate::cli::CONTAINER_EXEC_ARG;
use crate::error::AgentError;
use crate::reaper::{self, ExitReceiver, ExitStatus, Reaper};

/// An exec process of a container.
pub struct ExecProcess {
    pub exec_id: String,
    /// In the guest's root pid namespace.
    pub pid: Pid,
    exit: ExitReceiver,
    pub stdio: Stdio,
}

impl ExecProcess {
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> ExitStatus {
        reaper::wait_exit(self.exit.clone()).await
    }

    /// Signals the process unless it has exited (then its pid may be reused).
    pub fn signal(&self, container_id: &str, signal: Signal) -> Result<(), AgentError> {
        let gone = || AgentError::WrongState {
            id: container_id.to_string(),
            state: "process has exited",
        };
        if self.exit_status().is_some() {
            return Err(gone());
        }
        match kill(self.pid, signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(gone()),
            Err(err) => Err(AgentError::os(
                format!(
                    "container {container_id:?}: kill {signal} exec {:?}",
                    self.exec_id
                ),
                err,
            )),
        }
    }
}

/// The exec processes of a container, and the ids whose ExecProcess is under way.
#[derive(Default)]
pub struct Execs {
    pub running: HashMap<String, Arc<ExecProcess>>,
    creating: std::collections::HashSet<String>,
}

/// The namespaces of the process `pid` an exec process joins, the mount namespace last
/// (once in it, the other paths are no longer reachable), and its user namespace when it
/// has its own (`join_all` joins that one after all the others).
fn namespaces_of(pid: Pid) -> Vec<Join> {
    let join = |kind: &str| Join {
        kind: kind.to_string(),
        path: PathBuf::from(format!("/proc/{}/ns/{kind}", pid.as_raw())),
    };
    let mut joins: Vec<Join> = ["ipc", "uts", "net", "cgroup", "mnt"]
        .into_iter()
        .map(join)
        .collect();
    // Joining the user namespace one is in already fails (EINVAL).
    if !same_namespace(&join("user").path, Path::new("/proc/self/ns/user")) {
        joins.push(join("user"));
    }
    joins
}

/// Whether two `/proc/*/ns/*` links name the same namespace; false when either is gone.
fn same_namespace(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn check_exec_id(exec_id: &str) -> Result<(), AgentError> {
    let valid = !exec_id.is_empty()
        && exec_id.len() <= 255
        && exec_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument {
            field: "exec_id",
            reason: format!("{exec_id:?} must be 1-255 of [A-Za-z0-9_.-]"),
        })
    }
}

/// Parses and checks the process of an ExecProcess request.
pub fn parse_process(json: &str) -> Result<Process, AgentError> {
    let process: Process = serde_json::from_str(json).map_err(|e| AgentError::InvalidArgument {
        field: "process_json",
        reason: e.to_string(),
    })?;
    super::spec::validate_process(&process)?;
    Ok(process)
}

impl Container {
    /// Starts `process` in the container as `exec_id`; returns its pid.
    pub async fn exec(
        &self,
        reaper: &Reaper,
        exec_id: String,
        process: Process,
    ) -> Result<Pid, AgentError> {
        check_exec_id(&exec_id)?;
        if !matches!(*self.lifecycle(), Lifecycle::Started) {
            return Err(self.wrong_state("is not started"));
        }
        if self.exit_status().is_some() {
            return Err(self.wrong_state("has exited"));
        }
        {
            let mut execs = self.execs();
            if execs.running.contains_key(&exec_id) || !execs.creating.insert(exec_id.clone()) {
                return Err(AgentError::ProcessExists {
                    container_id: self.id.clone(),
                    exec_id,
                });
            }
        }
        let result = self.spawn_exec(reaper, &exec_id, process).await;
        let mut execs = self.execs();
        execs.creating.remove(&exec_id);
        let exec = result?;
        let pid = exec.pid;
        execs.running.insert(exec_id, Arc::new(exec));
        Ok(pid)
    }

    async fn spawn_exec(
        &self,
        reaper: &Reaper,
        exec_id: &str,
        process: Process,
    ) -> Result<ExecProcess, AgentError> {
        let id = self.id.clone();
        let os = |what: &'static str| {
            let id = id.clone();
            move |e| AgentError::os(format!("container {id:?}: exec: {what}"), e)
        };
        let ChildIo {
            child_stdio,
            pipe_ends,
            agent_sock,
            child_sock: exec_sock,
        } = ChildIo::new(process.terminal().unwrap_or(false)).map_err(|(what, e)| os(what)(e))?;
        let pid_ns =
            std::fs::File::open(format!("/proc/{}/ns/pid", self.pid.as_raw())).map_err(|e| {
                os("open the pid namespace")(nix::errno::Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
        let (pid, exit) = clone_child(
            reaper,
            InitFds {
                stdio: [&child_stdio[0], &child_stdio[1], &child_stdio[2]],
                sync: &exec_sock,
            },
            CloneSpec {
                mode: CONTAINER_EXEC_ARG,
                flags: nix::sched::CloneFlags::empty(),
                pid_ns: Some(&pid_ns),
                wait_before_exec: false,
            },
        )
        .map_err(os("clone"))?;
        drop(child_stdio);
        drop(exec_sock);

        let prepared = async {
            let sync_err = |source| AgentError::Sync {
                id: id.clone(),
                source,
            };
            let mut channel = InitChannel::new(agent_sock).map_err(|e| AgentError::Stdio {
                id: id.clone(),
                source: e.into(),
            })?;
            self.cgroup
                .add_process(pid)
                .map_err(|source| AgentError::Cgroup {
                    id: id.clone(),
                    source,
                })?;
            let config = ExecConfig {
                container_id: id.clone(),
                exec_id: exec_id.to_string(),
                join: namespaces_of(self.pid),
                process,
                seccomp: self.seccomp.clone(),
            };
            channel
                .send(&ToInit::Exec(Box::new(config)))
                .await
                .map_err(sync_err)?;
            let mut master = None;
            loop {
                match channel.recv().await.map_err(sync_err)? {
                    Some(FromInit::Pty) => master = channel.take_fd(),
                    // The exec closed the socket (close-on-exec).
                    None => break,
                    Some(FromInit::Failed(failure)) => {
                        return Err(AgentError::Init {
                            id: id.clone(),
                            failure,
                        })
                    }
                    Some(FromInit::Ready { .. }) => {
                        return Err(AgentError::Init {
                            id: id.clone(),
                            failure: InitFailure::internal("exec process sent Ready"),
                        })
                    }
                }
            }
            agent_stdio(&id, "exec process", pipe_ends, master)
        }
        .await;
        match prepared {
            Ok(stdio) => Ok(ExecProcess {
                exec_id: exec_id.to_string(),
                pid,
                exit,
                stdio,
            }),
            Err(err) => {
                let _ = kill(pid, Signal::SIGKILL);
                reaper::wait_exit(exit).await;
                Err(err)
            }
        }
    }

    /// The exec process `exec_id`.
    pub fn exec_process(&self, exec_id: &str) -> Result<Arc<ExecProcess>, AgentError> {
        self.execs()
            .running
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NoSuchProcess {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Forgets an exited exec process.
    pub fn remove_exec(&self, exec_id: &str) -> Result<(), AgentError> {
        let exec = self.exec_process(exec_id)?;
        if exec.exit_status().is_none() {
            return Err(AgentError::WrongState {
                id: self.id.clone(),
                state: "exec process is still running",
            });
        }
        self.execs().running.remove(exec_id);
        Ok(())
    }

    /// The exec id of every exec process, by pid.
    pub fn exec_pids(&self) -> HashMap<i32, String> {
        self.execs()
            .running
            .values()
            .map(|e| (e.pid.as_raw(), e.exec_id.clone()))
            .collect()
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, Execs> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_process_is_checked() {
        let ok = parse_process(r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#);
        assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
        let err =
            parse_process(r#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#).unwrap_err();
        assert!(err.to_string().contains("process.args"), "{err}");
        let err = parse_process(r#"{"args": ["sh"], "cwd": "tmp", "user": {"uid": 0, "gid": 0}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("process.cwd"), "{err}");
        let err = parse_process(
            r#"{"args": ["sh"], "cwd": "/", "env": ["X"], "user": {"uid": 0, "gid": 0}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("process.env"), "{err}");
        let err = parse_process("{").unwrap_err();
        assert!(err.to_string().contains("process_json"), "{err}");
    }

    #[test]
    fn exec_ids_are_checked() {
        assert!(check_exec_id("exec-1").is_ok());
        assert!(check_exec_id("").is_err());
        assert!(check_exec_id("a/b").is_err());
    }

    #[test]
    fn mount_namespace_is_joined_last() {
        // A process in the agent's user namespace: no user namespace to join.
        let me = Pid::this();
        let joins = namespaces_of(me);
        let mnt = PathBuf::from(format!("/proc/{}/ns/mnt", me.as_raw()));
        assert_eq!(joins.last().unwrap().path, mnt);
        assert_eq!(joins.len(), 5);
        // A gone process: its user namespace is listed (and the join will fail on it).
        let joins = namespaces_of(Pid::from_raw(i32::MAX));
        let kinds: Vec<&str> = joins.iter().map(|j| j.kind.as_str()).collect();
        assert_eq!(kinds, ["ipc", "uts", "net", "cgroup", "mnt", "user"]);
    }
}
