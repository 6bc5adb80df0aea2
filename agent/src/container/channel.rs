//! The agent's end of the sync socket to a container's init process (async).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;

use super::sync::{encode, FrameBuffer, FromInit, SyncError, ToInit};

/// The agent's end of the sync socket.
pub struct InitChannel {
    fd: AsyncFd<OwnedFd>,
    frames: FrameBuffer,
}

impl InitChannel {
    pub fn new(sock: OwnedFd) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(sock.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            sock.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        Ok(Self {
            fd: super::stdio::register(sock)?,
            frames: FrameBuffer::default(),
        })
    }

    /// Sends one message.
    pub async fn send(&self, msg: &ToInit) -> Result<(), SyncError> {
        let frame = encode(msg)?;
        let mut sent = 0;
        while sent < frame.len() {
            let mut guard = self.fd.writable().await.map_err(errno)?;
            match guard.try_io(|inner| {
                nix::sys::socket::send(
                    inner.get_ref().as_raw_fd(),
                    &frame[sent..],
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                )
                .map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => sent += n,
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EINTR) => {}
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EPIPE) => {
                    return Err(SyncError::Closed)
                }
                Ok(Err(err)) => return Err(errno(err)),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// The next message; `None` when the init process closed its end (it exec'd or died).
    pub async fn recv(&mut self) -> Result<Option<FromInit>, SyncError> {
        loop {
            if let Some(msg) = self.frames.next()? {
                return Ok(Some(msg));
            }
            let mut guard = self.fd.readable().await.map_err(errno)?;
            let frames = &mut self.frames;
            match guard.try_io(|inner| {
                frames
                    .receive(inner.get_ref().as_raw_fd())
                    .map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EINTR) => {}
                Ok(Err(err)) if err.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
                Ok(Err(err)) => return Err(errno(err)),
                Err(_would_block) => {}
            }
        }
    }

    /// The oldest fd that came with a message.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.frames.take_fd()
    }
}

fn errno(err: io::Error) -> SyncError {
    SyncError::Os(Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))
}
