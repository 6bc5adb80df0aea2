//! The channel between the agent and a container's init process.
//!
//! A `SOCK_STREAM` socketpair carries length-prefixed JSON frames both ways:
//!
//! - agent → init: [`ToInit::Config`] once the init is in its cgroup, later [`ToInit::Start`]
//!   (an exec process gets [`ToInit::Exec`] and execs without waiting for a start);
//! - init → agent: [`FromInit::Pty`] (with the pty master attached as `SCM_RIGHTS`) for a
//!   terminal, then [`FromInit::Ready`] or [`FromInit::Failed`]; after Start, a failed exec
//!   sends `Failed`, a successful one closes the init's end (close-on-exec), which the agent
//!   reads as end of stream.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Frames larger than this are refused (a spec is a few KiB).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What the container's init process needs to prepare the container.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub container_id: String,
    pub spec: oci_spec::runtime::Spec,
    /// The root directory in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// Remount the root read-only.
    pub readonly_root: bool,
    /// Namespaces to join before the setup.
    pub join: Vec<super::namespaces::Join>,
    /// Namespaces to unshare after joining them (`CLONE_NEW*` bits): those a joined user
    /// namespace must own.
    pub unshare: libc::c_int,
    /// Unshare a new cgroup namespace.
    pub new_cgroup: bool,
    /// The container's cgroup directory in the agent's mount namespace: bound at a cgroup
    /// mount where mounting cgroup2 is refused (in a user namespace).
    #[serde(default)]
    pub cgroup_dir: Option<PathBuf>,
}

/// What an exec process needs: the namespaces to join and the process to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    pub container_id: String,
    pub exec_id: String,
    /// The container's namespaces, the mount namespace last.
    pub join: Vec<super::namespaces::Join>,
    pub process: oci_spec::runtime::Process,
    /// The container's seccomp profile, which exec processes get too.
    #[serde(default)]
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

/// Messages from the agent to the init process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    Config(Box<InitConfig>),
    Start,
    /// To an exec process: prepare and exec at once.
    Exec(Box<ExecConfig>),
}

/// Messages from the init process to the agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
    /// The pty master travels with this frame.
    Pty,
    /// Prepared; waiting for Start. `warnings` are worth a line in the agent's log.
    Ready {
        warnings: Vec<String>,
    },
    Failed(InitFailure),
}

/// What kind of failure the init process met; decides the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    NotFound,
    PermissionDenied,
    InvalidArgument,
    Internal,
}

/// A failure of the init process, reported to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct InitFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl InitFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Internal, message)
    }

    /// An OS error while doing `what`; ENOENT and EACCES keep their meaning.
    pub fn os(what: impl std::fmt::Display, errno: Errno) -> Self {
        let kind = match errno {
            Errno::ENOENT => FailureKind::NotFound,
            Errno::EACCES | Errno::EPERM => FailureKind::PermissionDenied,
            Errno::ENOEXEC | Errno::E2BIG | Errno::ENAMETOOLONG => FailureKind::InvalidArgument,
            _ => FailureKind::Internal,
        };
        Self::new(kind, format!("{what}: {}", errno.desc()))
    }
}

/// The channel broke.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync channel: {0}")]
    Os(#[from] Errno),
    #[error("sync channel: bad frame: {0}")]
    Frame(String),
    #[error("container init closed the sync channel")]
    Closed,
}

/// Encodes one frame: a little-endian u32 length and the JSON body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, SyncError> {
    let body = serde_json::to_vec(msg).map_err(|e| SyncError::Frame(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| SyncError::Frame("frame too large".into()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reassembles frames from a byte stream, keeping the fds that arrived with them.
#[derive(Default)]
pub struct FrameBuffer {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl FrameBuffer {
    /// The next whole frame, if the buffer holds one.
    pub fn next<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, SyncError> {
        let Some(len_bytes) = self.bytes.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let len = usize::try_from(len).map_err(|_| SyncError::Frame("length".into()))?;
        if len > MAX_FRAME {
            return Err(SyncError::Frame(format!("{len} bytes is too large")));
        }
        if self.bytes.len() < 4 + len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.bytes[4..4 + len])
            .map_err(|e| SyncError::Frame(e.to_string()))?;
        self.bytes.drain(..4 + len);
        Ok(Some(msg))
    }

    /// Takes the oldest fd received.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        (!self.fds.is_empty()).then(|| self.fds.remove(0))
    }

    /// One `recvmsg` into the buffer. Returns the byte count; 0 is end of stream.
    pub fn receive(&mut self, fd: RawFd) -> Result<usize, Errno> {
        let mut chunk = [0u8; 8192];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut chunk)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let n = msg.bytes;
        let mut received = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                received.extend(fds);
            }
        }
        for raw in received {
            // SAFETY: the kernel just installed this fd in our table for us; nothing else
            // owns it.
            self.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        self.bytes.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads more bytes with read(2), without ancillary data: what the init and exec
    /// processes use, since the agent never sends them fds and their seccomp filter may
    /// already be loaded (every profile allows read, not necessarily recvmsg).
    pub fn receive_plain(&mut self, fd: RawFd) -> Result<usize, Errno> {
        let mut chunk = [0u8; 8192];
        let n = nix::unistd::read(fd, &mut chunk)?;
        self.bytes.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

/// Sends a whole frame on a blocking socket, with `fd` attached to its first byte.
pub fn send_blocking<T: Serialize>(
    sock: RawFd,
    msg: &T,
    fd: Option<RawFd>,
) -> Result<(), SyncError> {
    let frame = encode(msg)?;
    let mut sent = 0;
    if fd.is_none() {
        // Plain write(2): the container's seccomp filter may already be loaded, and every
        // profile a process can live with allows it (not necessarily sendmsg).
        while sent < frame.len() {
            // SAFETY: `sock` is an fd the caller owns and keeps open across the call.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) };
            match nix::unistd::write(borrowed, &frame[sent..]) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        return Ok(());
    }
    while sent < frame.len() {
        let fds = fd.filter(|_| sent == 0).map(|f| [f]);
        let cmsgs: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|f| vec![ControlMessage::ScmRights(f)])
            .unwrap_or_default();
        let iov = [IoSlice::new(&frame[sent..])];
        match sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Reads the next frame from a blocking socket with plain reads (no fds travel this way);
/// `None` at end of stream.
pub fn recv_blocking<T: for<'de> Deserialize<'de>>(
    sock: &impl AsRawFd,
    buf: &mut FrameBuffer,
) -> Result<Option<T>, SyncError> {
    loop {
        if let Some(msg) = buf.next()? {
            return Ok(Some(msg));
        }
        match buf.receive_plain(sock.as_raw_fd()) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    #[test]
    fn frames_round_trip_with_an_fd() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        send_blocking(a.as_raw_fd(), &FromInit::Pty, Some(devnull.as_raw_fd())).unwrap();
        let failure = InitFailure::new(FailureKind::NotFound, "x");
        send_blocking(a.as_raw_fd(), &FromInit::Failed(failure.clone()), None).unwrap();
        drop(a);
        let mut buf = FrameBuffer::default();
        // The agent's side takes fds with recvmsg; the first frame carries one.
        while buf.fds.is_empty() {
            assert!(buf.receive(b.as_raw_fd()).unwrap() > 0);
        }
        assert!(matches!(
            recv_blocking(&b, &mut buf).unwrap(),
            Some(FromInit::Pty)
        ));
        assert!(buf.take_fd().is_some());
        match recv_blocking(&b, &mut buf).unwrap() {
            Some(FromInit::Failed(f)) => assert_eq!(f, failure),
            other => panic!("unexpected {other:?}"),
        }
        assert!(recv_blocking::<FromInit>(&b, &mut buf).unwrap().is_none());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let frame = encode(&FromInit::Ready { warnings: vec![] }).unwrap();
        let mut buf = FrameBuffer::default();
        buf.bytes.extend_from_slice(&frame[..3]);
        assert!(buf.next::<FromInit>().unwrap().is_none());
        buf.bytes.extend_from_slice(&frame[3..]);
        assert!(matches!(
            buf.next::<FromInit>().unwrap(),
            Some(FromInit::Ready { .. })
        ));
    }
}
