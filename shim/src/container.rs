//! What the shim knows of a container: its processes (the init process and exec
//! processes), their stdio, state and exit.

use std::collections::HashMap;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::errors::ShimError;
use crate::io::{Input, Outputs, StdioPaths};

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How and when a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// One process: the container's init process or an exec process.
pub struct Process {
    pub stdio: StdioPaths,
    pub status: Status,
    /// Output copies, started at create (init) or start (exec), until the watcher takes them.
    pub outputs: Option<Outputs>,
    pub input: Option<Input>,
    /// An exec process's OCI process (JSON) until it is started.
    pub spec_json: Option<String>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(stdio: StdioPaths, outputs: Option<Outputs>, spec_json: Option<String>) -> Self {
        Self {
            stdio,
            status: Status::Created,
            outputs,
            input: None,
            spec_json,
            exit: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the end; waiters wake up.
    pub fn set_exited(&mut self, exit: Exit) {
        self.status = Status::Stopped;
        self.input = None;
        self.exit.send_replace(Some(exit));
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }
}

/// One container of the pod.
pub struct Container {
    pub id: String,
    pub bundle: String,
    /// The pid containerd knows the tasks by.
    pub pid: u32,
    /// The init process's pid in the guest, once started.
    pub guest_pid: Option<u32>,
    pub paused: bool,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

impl Container {
    pub fn new(id: String, bundle: String, stdio: StdioPaths, pid: u32, outputs: Outputs) -> Self {
        Self {
            id,
            bundle,
            pid,
            guest_pid: None,
            paused: false,
            init: Process::new(stdio, Some(outputs), None),
            execs: HashMap::new(),
        }
    }

    /// The init process for an empty `exec_id`, else that exec process.
    pub fn process(&mut self, exec_id: &str) -> Result<&mut Process, ShimError> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = &self.id;
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of container {id}")))
    }

    /// Records the init process's end; exec processes that have not started never will.
    pub fn set_exited(&mut self, exit: Exit) {
        self.paused = false;
        self.init.set_exited(exit);
        for exec in self.execs.values_mut() {
            if exec.status == Status::Created {
                exec.set_exited(exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_exit() {
        let mut c = Container::new(
            "c".into(),
            "/b".into(),
            StdioPaths::default(),
            1,
            crate::io::attach_outputs_none(),
        );
        let mut rx = c.init.exit_watch();
        let waiter = tokio::spawn(async move { *rx.wait_for(|e| e.is_some()).await.unwrap() });
        let exit = Exit {
            status: 3,
            at: SystemTime::now(),
        };
        c.set_exited(exit);
        assert_eq!(waiter.await.unwrap(), Some(exit));
        assert_eq!(c.init.status, Status::Stopped);
        assert_eq!(c.init.exit(), Some(exit));
    }

    #[test]
    fn exec_processes_are_found_by_id() {
        let mut c = Container::new(
            "c".into(),
            "/b".into(),
            StdioPaths::default(),
            1,
            crate::io::attach_outputs_none(),
        );
        c.execs.insert(
            "e1".into(),
            Process::new(StdioPaths::default(), None, Some("{}".into())),
        );
        assert!(c.process("e1").is_ok());
        let err = c.process("e2").err().unwrap();
        assert_eq!(err.code(), containerd_shim::protos::ttrpc::Code::NOT_FOUND);
        // The init's end also ends exec processes that never started.
        c.set_exited(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        assert_eq!(c.process("e1").unwrap().status, Status::Stopped);
    }
}
