//! A task's stdio: containerd's FIFOs on the host (or, for output, a `file://` log file or
//! a `binary://` logging program), copied to and from the agent's stream RPCs by the
//! library's copy loops.

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
    /// A `binary://` logging program, which ends once both of its streams have.
    logger: Option<tokio::process::Child>,
}

/// How long a logging program may take to get ready, and to finish after its streams end.
const LOGGER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Outputs {
    /// Waits until every output stream has reached its end (and a logging program has
    /// written it all out).
    pub async fn finished(mut self) {
        for handle in std::mem::take(&mut self.handles) {
            let _ = handle.await;
        }
        if let Some(mut logger) = self.logger.take() {
            match tokio::time::timeout(LOGGER_TIMEOUT, logger.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    tracing::warn!(%status, "logging program ended with an error");
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("logging program still running after its streams ended; killed");
                    let _ = logger.kill().await;
                }
            }
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
        logger: None,
    }
}

/// Where one stdio stream goes, as containerd names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A FIFO path (plain, or `fifo://`).
    Fifo(String),
    /// `file:///PATH`: appended to the file.
    File(std::path::PathBuf),
    /// `binary:///PATH?k=v`: a logging program reads the streams on fds 3 and 4.
    Binary {
        program: std::path::PathBuf,
        args: Vec<String>,
    },
}

/// Decodes the %XX escapes of a URI part.
fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Parses a stdio path or URI; `None` for no stream.
fn target(uri: &str) -> Result<Option<Target>, ShimError> {
    if uri.is_empty() {
        return Ok(None);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Some(Target::Fifo(uri.to_string())));
    };
    let bad = |why: &str| ShimError::InvalidArgument(format!("stdio URI {uri}: {why}"));
    if !matches!(scheme, "fifo" | "file" | "binary") {
        return Err(bad(&format!(
            "scheme {scheme}:// is not supported (fifo, file and binary are)"
        )));
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = percent_decode(path).map_err(|()| bad("bad %-escape"))?;
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute (scheme:///path)"));
    }
    match scheme {
        "fifo" => Ok(Some(Target::Fifo(path))),
        "file" => Ok(Some(Target::File(path.into()))),
        // "binary", the one left after the check above.
        _ => {
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(key).map_err(|()| bad("bad %-escape"))?);
                if !value.is_empty() {
                    args.push(percent_decode(value).map_err(|()| bad("bad %-escape"))?);
                }
            }
            Ok(Some(Target::Binary {
                program: path.into(),
                args,
            }))
        }
    }
}

/// A plain FIFO path, the only kind stdin can be.
fn fifo_path(path: &str) -> Result<Option<String>, ShimError> {
    match target(path)? {
        None => Ok(None),
        Some(Target::Fifo(path)) => Ok(Some(path)),
        Some(_) => Err(ShimError::InvalidArgument(format!(
            "stdin {path}: only a FIFO can be stdin"
        ))),
    }
}

fn open_error(path: &str) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound => ShimError::NotFound(format!("stdio FIFO {path}")),
        _ => ShimError::InvalidArgument(format!("open stdio FIFO {path}: {e}")),
    }
}

/// Starts copying the process's output to stdout and (without a terminal) stderr. Each
/// FIFO is closed when its stream ends, which is containerd's end of output; a log file is
/// appended to; a logging program is started for the process and gets both streams.
pub fn attach_outputs(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    namespace: &str,
    paths: &StdioPaths,
) -> Result<Outputs, ShimError> {
    let stdout = target(&paths.stdout)?;
    let stderr = if paths.terminal {
        None
    } else {
        target(&paths.stderr)?
    };
    let mut outputs = Outputs {
        handles: Vec::new(),
        logger: None,
    };
    let mut logger_pipes: Option<[Option<pipe::Sender>; 2]> = None;
    for (is_stderr, target) in [(false, stdout), (true, stderr)] {
        let Some(target) = target else {
            continue;
        };
        let copy = |writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>| {
            let agent = agent.clone();
            let id = container_id.to_string();
            let exec_id = exec_id.to_string();
            tokio::spawn(async move {
                if let Err(e) =
                    copy_output(agent, id.clone(), exec_id.clone(), is_stderr, writer).await
                {
                    tracing::debug!(container = %id, exec = %exec_id, stderr = is_stderr, error = %e, "output copy ended");
                }
            })
        };
        let writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match target {
            Target::Fifo(path) => {
                // Read-write: opening never fails for want of a reader, and the write end
                // is ours alone, so the reader sees the end when the copy drops it.
                Box::new(
                    pipe::OpenOptions::new()
                        .read_write(true)
                        .open_sender(&path)
                        .map_err(open_error(&path))?,
                )
            }
            Target::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)
                    .map_err(|e| {
                        ShimError::InvalidArgument(format!("open log file {}: {e}", path.display()))
                    })?;
                Box::new(tokio::fs::File::from_std(file))
            }
            Target::Binary { program, args } => {
                if logger_pipes.is_none() {
                    let (child, pipes) = start_logger(&program, &args, container_id, namespace)?;
                    outputs.logger = Some(child);
                    logger_pipes = Some(pipes.map(Some));
                }
                let slot = logger_pipes
                    .as_mut()
                    .and_then(|p| p[usize::from(is_stderr)].take())
                    .ok_or_else(|| {
                        ShimError::InvalidArgument(
                            "stdout and stderr name different logging programs".into(),
                        )
                    })?;
                Box::new(slot)
            }
        };
        outputs.handles.push(copy(writer));
    }
    Ok(outputs)
}

/// Starts a `binary://` logging program the way containerd's shims do: the process's
/// stdout on fd 3, stderr on fd 4, and fd 5 to close (or write to) once it is ready;
/// `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment. Returns it with the write
/// ends of its stdout and stderr pipes (a stderr end nobody takes, with a terminal, is
/// dropped and the program sees its end at once).
fn start_logger(
    program: &std::path::Path,
    args: &[String],
    container_id: &str,
    namespace: &str,
) -> Result<(tokio::process::Child, [pipe::Sender; 2]), ShimError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ShimError::InvalidArgument(format!(
            "logging program {}: {what}: {e}",
            program.display()
        ))
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (out_r, out_w) = pipe().map_err(|e| fail("pipe", &e))?;
    let (err_r, err_w) = pipe().map_err(|e| fail("pipe", &e))?;
    let (ready_r, ready_w) = pipe().map_err(|e| fail("pipe", &e))?;
    // Copies above 5 so that moving them to 3, 4 and 5 never overwrites one still to move.
    let high = |fd: &OwnedFd| -> Result<OwnedFd, ShimError> {
        let raw = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| fail("dup", &e))?;
        // SAFETY: fcntl just created this descriptor and nothing else owns it.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
    };
    let sources = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
    let raw: [i32; 3] = [
        sources[0].as_raw_fd(),
        sources[1].as_raw_fd(),
        sources[2].as_raw_fd(),
    ];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on descriptors that
    // are open in the child (inherited copies of `sources`).
    unsafe {
        cmd.pre_exec(move || {
            for (target, source) in (3..).zip(raw) {
                if libc::dup2(source, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| fail("start", &e))?;
    drop(sources);
    drop((out_r, err_r, ready_w));
    // Ready when it closes fd 5 (or writes to it), as containerd's shims wait.
    let ready = std::fs::File::from(ready_r);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut byte = [0u8; 1];
        let _ = tx.send((&ready).read(&mut byte).map(|_| ()));
    });
    match rx.recv_timeout(LOGGER_TIMEOUT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(fail("wait until ready", &e)),
        Err(_) => return Err(fail("wait until ready", &"no sign within 10 s")),
    }
    let out = pipe::Sender::from_owned_fd(out_w).map_err(|e| fail("stdout pipe", &e))?;
    let err = pipe::Sender::from_owned_fd(err_w).map_err(|e| fail("stderr pipe", &e))?;
    Ok((child, [out, err]))
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
        .open_receiver(&path)
        .map_err(open_error(&path))?;
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
    fn stdio_targets_are_parsed() {
        assert_eq!(target("").unwrap(), None);
        assert_eq!(
            target("/run/x/stdout").unwrap(),
            Some(Target::Fifo("/run/x/stdout".into()))
        );
        assert_eq!(
            target("fifo:///run/x/out").unwrap(),
            Some(Target::Fifo("/run/x/out".into()))
        );
        assert_eq!(
            target("file:///var/log/a%20b.log").unwrap(),
            Some(Target::File("/var/log/a b.log".into()))
        );
        assert_eq!(
            target("binary:///usr/bin/logger?dir=/tmp/x&verbose").unwrap(),
            Some(Target::Binary {
                program: "/usr/bin/logger".into(),
                args: vec!["dir".into(), "/tmp/x".into(), "verbose".into()],
            })
        );
        let err = target("http://example/x").unwrap_err();
        assert!(err.to_string().contains("scheme http://"), "{err}");
        assert!(target("file://relative").is_err());
        // Stdin is a FIFO or nothing.
        assert!(fifo_path("").unwrap().is_none());
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
