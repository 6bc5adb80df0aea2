//! A task's stdio: containerd's FIFOs on the host, copied to and from the agent's stream
//! RPCs by the library's copy loops.

use std::io::ErrorKind;

use runv_runtime::agent::AgentClient;
use runv_runtime::stdio::{copy_input, copy_output};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::errors::ShimError;

/// The FIFO paths containerd gave for a task (empty: no such stream).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// Stdin FIFO.
    pub stdin: String,
    /// Stdout FIFO.
    pub stdout: String,
    /// Stderr FIFO.
    pub stderr: String,
    /// Whether the process has a terminal (stderr is then part of stdout).
    pub terminal: bool,
}

/// The output copies of a task, running from Create on.
pub struct Outputs {
    handles: Vec<JoinHandle<()>>,
}

impl Outputs {
    /// Waits until every output stream has reached its end.
    pub async fn finished(mut self) {
        for handle in std::mem::take(&mut self.handles) {
            let _ = handle.await;
        }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

/// No output copies, for a task without stdout and stderr.
#[cfg(test)]
pub fn attach_outputs_none() -> Outputs {
    Outputs {
        handles: Vec::new(),
    }
}

fn fifo_path(path: &str) -> Result<Option<&str>, ShimError> {
    if path.is_empty() {
        return Ok(None);
    }
    // containerd passes plain FIFO paths for ctr and CRI; log URIs (binary://, file://) are
    // for another milestone.
    if path.contains("://") {
        return Err(ShimError::InvalidArgument(format!(
            "stdio {path}: only FIFO paths are supported"
        )));
    }
    Ok(Some(path))
}

fn open_error(path: &str) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound => ShimError::NotFound(format!("stdio FIFO {path}")),
        _ => ShimError::InvalidArgument(format!("open stdio FIFO {path}: {e}")),
    }
}

/// Starts copying the process's output to the stdout (and, without a terminal, stderr)
/// FIFOs. Each FIFO is closed when its stream ends, which is containerd's end of output.
pub fn attach_outputs(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    paths: &StdioPaths,
) -> Result<Outputs, ShimError> {
    let mut handles = Vec::new();
    let streams = [
        (false, paths.stdout.as_str()),
        (true, paths.stderr.as_str()),
    ];
    for (stderr, path) in streams {
        if stderr && paths.terminal {
            continue;
        }
        let Some(path) = fifo_path(path)? else {
            continue;
        };
        // Read-write: opening never fails for want of a reader, and the write end is ours
        // alone, so the reader sees the end when the copy drops it.
        let fifo = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)
            .map_err(open_error(path))?;
        let agent = agent.clone();
        let id = container_id.to_string();
        let exec_id = exec_id.to_string();
        handles.push(tokio::spawn(async move {
            if let Err(e) = copy_output(agent, id.clone(), exec_id.clone(), stderr, fifo).await {
                tracing::debug!(container = %id, exec = %exec_id, stderr, error = %e, "output copy ended");
            }
        }));
    }
    Ok(Outputs { handles })
}

/// The stdin copy of a task: runs until CloseIO, then passes on what is still in the FIFO
/// and ends the process's stdin.
pub struct Input {
    close: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Input {
    /// Ends the process's stdin once what containerd has written so far is through.
    pub fn close(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A FIFO reader that reports its end when told to close and the FIFO has nothing more
/// buffered. The FIFO is opened read-write (so it never sees an end of its own while
/// containerd reopens or has not yet opened its side); CloseIO is the end.
struct ClosableFifo {
    fifo: pipe::Receiver,
    close: oneshot::Receiver<()>,
    closing: bool,
}

impl AsyncRead for ClosableFifo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if !this.closing && std::pin::Pin::new(&mut this.close).poll(cx).is_ready() {
            this.closing = true;
        }
        if this.closing {
            // Drain without waiting: what is buffered now, then the end. A plain read(2) on
            // the non-blocking descriptor, since the reactor may not have seen the data yet.
            use std::os::fd::AsRawFd;
            let mut chunk = vec![0u8; buf.remaining()];
            return match nix::unistd::read(this.fifo.as_raw_fd(), &mut chunk) {
                Ok(n) => {
                    buf.put_slice(&chunk[..n]);
                    Poll::Ready(Ok(()))
                }
                Err(nix::errno::Errno::EAGAIN) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e.into())),
            };
        }
        std::pin::Pin::new(&mut this.fifo).poll_read(cx, buf)
    }
}

use std::future::Future;

/// Starts feeding the stdin FIFO to the process; `None` when there is no stdin.
pub fn attach_input(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    paths: &StdioPaths,
) -> Result<Option<Input>, ShimError> {
    let Some(path) = fifo_path(&paths.stdin)? else {
        return Ok(None);
    };
    let fifo = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(open_error(path))?;
    let (close_tx, close_rx) = oneshot::channel();
    let reader = ClosableFifo {
        fifo,
        close: close_rx,
        closing: false,
    };
    let agent = agent.clone();
    let id = container_id.to_string();
    let exec_id = exec_id.to_string();
    let handle = tokio::spawn(async move {
        if let Err(e) = copy_input(agent, id.clone(), exec_id.clone(), reader).await {
            tracing::debug!(container = %id, exec = %exec_id, error = %e, "stdin copy ended");
        }
    });
    Ok(Some(Input {
        close: Some(close_tx),
        handle,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_refused_and_empty_is_none() {
        assert!(fifo_path("").unwrap().is_none());
        assert_eq!(fifo_path("/run/x/stdout").unwrap(), Some("/run/x/stdout"));
        assert!(matches!(
            fifo_path("binary:///usr/bin/logger"),
            Err(ShimError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn closable_fifo_drains_then_ends() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .unwrap();
        let mut writer = pipe::OpenOptions::new().open_sender(&path).unwrap();
        let (tx, rx) = oneshot::channel();
        let mut reader = ClosableFifo {
            fifo,
            close: rx,
            closing: false,
        };
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"hello")
            .await
            .unwrap();
        tx.send(()).unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reader.read_to_end(&mut all),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(all, b"hello");
    }
}
