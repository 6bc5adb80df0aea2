//! One container of the pod as the shim tracks it: its status, stdio and exit.

use std::time::SystemTime;

use tokio::sync::watch;

use crate::io::{Input, Outputs, StdioPaths};

/// Where a container is in its life, as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, its process not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process has exited.
    Stopped,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + N when killed by signal N.
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

/// A container.
pub struct Container {
    /// Its id.
    pub id: String,
    /// The bundle containerd made for it.
    pub bundle: String,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// Its status.
    pub status: Status,
    /// The pid containerd knows it by.
    pub pid: u32,
    /// Output copies, handed to the exit watcher at start.
    pub outputs: Option<Outputs>,
    /// The stdin copy, if it has stdin.
    pub input: Option<Input>,
    exit: watch::Sender<Option<Exit>>,
}

impl Container {
    /// A created container.
    pub fn new(id: String, bundle: String, stdio: StdioPaths, pid: u32, outputs: Outputs) -> Self {
        Self {
            id,
            bundle,
            stdio,
            status: Status::Created,
            pid,
            outputs: Some(outputs),
            input: None,
            exit: watch::channel(None).0,
        }
    }

    /// Its exit, once it has exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the exit and wakes every waiter.
    pub fn set_exited(&mut self, exit: Exit) {
        self.status = Status::Stopped;
        self.input = None;
        self.exit.send_replace(Some(exit));
    }

    /// Something to wait for its exit on without holding the container.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
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
        let mut rx = c.exit_watch();
        let waiter = tokio::spawn(async move { *rx.wait_for(|e| e.is_some()).await.unwrap() });
        let exit = Exit {
            status: 3,
            at: SystemTime::now(),
        };
        c.set_exited(exit);
        assert_eq!(waiter.await.unwrap(), Some(exit));
        assert_eq!(c.status, Status::Stopped);
        assert_eq!(c.exit(), Some(exit));
    }
}
