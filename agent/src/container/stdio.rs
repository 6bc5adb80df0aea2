//! A container process's stdio on the agent's side: pipes, or a pty master for a terminal.
//!
//! The agent's ends are non-blocking and driven by tokio. Each stream has its own lock, so
//! a blocked read of stdout does not hold up stderr, stdin or any other container.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;
use ttrpc::Code;

/// A stdio request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("stdin is closed")]
    StdinClosed,
    #[error("the process closed its stdin")]
    BrokenPipe,
    #[error("the process has no terminal")]
    NotATerminal,
    #[error("stdio: {0}")]
    Io(#[from] io::Error),
}

impl StdioError {
    pub fn code(&self) -> Code {
        match self {
            Self::StdinClosed | Self::BrokenPipe | Self::NotATerminal => Code::FAILED_PRECONDITION,
            Self::Io(_) => Code::INTERNAL,
        }
    }
}

/// Which output stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// The pipe ends the agent keeps while the child gets the others.
pub struct PipeEnds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Creates the three stdio pipes: the child's ends (stdin, stdout, stderr) and the agent's.
pub fn pipes() -> Result<([OwnedFd; 3], PipeEnds), Errno> {
    let (stdin_r, stdin_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((
        [stdin_r, stdout_w, stderr_w],
        PipeEnds {
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        },
    ))
}

type Fd = Arc<AsyncFd<OwnedFd>>;

struct Stream {
    /// `None` once the stream has ended.
    fd: Option<Fd>,
    /// A pty master: EIO means the other side is gone, i.e. end of stream.
    pty: bool,
}

/// The agent's side of one process's stdio.
pub struct Stdio {
    terminal: Option<Fd>,
    stdin: Mutex<Option<Fd>>,
    stdout: Mutex<Stream>,
    stderr: Mutex<Stream>,
}

fn async_fd(fd: OwnedFd) -> io::Result<Fd> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(Arc::new(register(fd)?))
}

/// Registers an fd with the tokio reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its fd open and returns the same number from `as_raw_fd`
    // until it is dropped, which happens only when the `AsyncFd` is dropped.
    let registered = unsafe { AsyncFd::register(fd) };
    registered.map_err(io::Error::from)
}

impl Stdio {
    pub fn from_pipes(ends: PipeEnds) -> io::Result<Self> {
        Ok(Self {
            terminal: None,
            stdin: Mutex::new(Some(async_fd(ends.stdin)?)),
            stdout: Mutex::new(Stream {
                fd: Some(async_fd(ends.stdout)?),
                pty: false,
            }),
            stderr: Mutex::new(Stream {
                fd: Some(async_fd(ends.stderr)?),
                pty: false,
            }),
        })
    }

    /// A terminal: stdin and stdout are the master, stderr is empty.
    pub fn from_pty(master: OwnedFd) -> io::Result<Self> {
        let master = async_fd(master)?;
        Ok(Self {
            terminal: Some(Arc::clone(&master)),
            stdin: Mutex::new(Some(Arc::clone(&master))),
            stdout: Mutex::new(Stream {
                fd: Some(master),
                pty: true,
            }),
            stderr: Mutex::new(Stream {
                fd: None,
                pty: true,
            }),
        })
    }

    /// Writes all of `data` to the process's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let stdin = self.stdin.lock().await;
        let fd = stdin.as_ref().ok_or(StdioError::StdinClosed)?;
        write_all(fd, data).await
    }

    /// Ends the process's stdin: closes the pipe, or sends the terminal's EOF character.
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        let mut stdin = self.stdin.lock().await;
        let Some(fd) = stdin.take() else {
            return Ok(());
        };
        if self.terminal.is_some() {
            let termios =
                nix::sys::termios::tcgetattr(fd.get_ref().as_fd()).map_err(io::Error::from)?;
            let eof =
                termios.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize];
            write_all(&fd, &[eof]).await?;
        }
        Ok(())
    }

    /// Reads up to `max_len` bytes of an output stream, waiting for data; empty at the end.
    pub async fn read(&self, which: Output, max_len: usize) -> Result<Vec<u8>, StdioError> {
        let lock = match which {
            Output::Stdout => &self.stdout,
            Output::Stderr => &self.stderr,
        };
        let mut stream = lock.lock().await;
        let Some(fd) = stream.fd.clone() else {
            return Ok(Vec::new());
        };
        let data = read_some(&fd, max_len.max(1), stream.pty).await?;
        if data.is_empty() {
            stream.fd = None;
        }
        Ok(data)
    }

    /// Sets the terminal's size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let master = self.terminal.as_ref().ok_or(StdioError::NotATerminal)?;
        set_window_size(master.get_ref().as_raw_fd(), rows, cols).map_err(io::Error::from)?;
        Ok(())
    }
}

/// TIOCSWINSZ on a terminal fd.
pub fn set_window_size(fd: i32, rows: u16, cols: u16) -> Result<(), Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is an open fd and `size` a valid winsize that outlives the call; the
    // kernel only reads it.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &size) };
    Errno::result(ret).map(drop)
}

async fn write_all(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> Result<usize, StdioError> {
    let mut written = 0;
    while written < data.len() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| {
            nix::unistd::write(inner.get_ref(), &data[written..]).map_err(io::Error::from)
        }) {
            Ok(Ok(n)) => written += n,
            Ok(Err(err)) if err.raw_os_error() == Some(libc::EPIPE) => {
                return Err(StdioError::BrokenPipe)
            }
            Ok(Err(err)) if err.raw_os_error() == Some(libc::EINTR) => {}
            Ok(Err(err)) => return Err(err.into()),
            Err(_would_block) => {}
        }
    }
    Ok(written)
}

async fn read_some(fd: &AsyncFd<OwnedFd>, max_len: usize, pty: bool) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max_len];
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)
        }) {
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(Err(err)) if pty && err.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
            Ok(Err(err)) if err.raw_os_error() == Some(libc::EINTR) => {}
            Ok(Err(err)) => return Err(err),
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipes_carry_data_and_end() {
        let ([child_in, child_out, child_err], ends) = pipes().unwrap();
        let stdio = Stdio::from_pipes(ends).unwrap();
        assert_eq!(stdio.write_stdin(b"abc").await.unwrap(), 3);
        let mut buf = [0u8; 3];
        assert_eq!(
            nix::unistd::read(child_in.as_raw_fd(), &mut buf).unwrap(),
            3
        );
        nix::unistd::write(&child_out, b"out").unwrap();
        drop(child_out);
        assert_eq!(stdio.read(Output::Stdout, 100).await.unwrap(), b"out");
        assert!(stdio.read(Output::Stdout, 100).await.unwrap().is_empty());
        assert!(stdio.read(Output::Stdout, 100).await.unwrap().is_empty());
        drop(child_err);
        assert!(stdio.read(Output::Stderr, 100).await.unwrap().is_empty());
        stdio.close_stdin().await.unwrap();
        assert!(matches!(
            stdio.write_stdin(b"x").await,
            Err(StdioError::StdinClosed)
        ));
        assert!(matches!(stdio.resize(1, 1), Err(StdioError::NotATerminal)));
    }
}
