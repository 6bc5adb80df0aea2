//! A tap device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::queue::{FrameSink, VNET_HDR_LEN};

// ioctl numbers from <linux/if_tun.h>: _IOW('T', nr, int).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;
/// [`VNET_HDR_LEN`] as the C int TUNSETVNETHDRSZ takes.
const VNET_HDR_LEN_C: libc::c_int = 12;
const _: () = assert!(VNET_HDR_LEN_C as usize == VNET_HDR_LEN);
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Errors while opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Name too long or with NUL.
    #[error("Invalid tap name {0:?}")]
    Name(String),
    /// /dev/net/tun cannot be opened.
    #[error("Cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// An ioctl failed.
    #[error("Tap ioctl {0} failed for {1}")]
    Ioctl(&'static str, String, #[source] io::Error),
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to (or creates) tap `name`, non-blocking, with a 12-byte vnet header.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl_err = |what| TapError::Ioctl(what, name.to_string(), io::Error::last_os_error());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as; the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(ioctl_err("TUNSETIFF"));
        }
        let hdr_len: libc::c_int = VNET_HDR_LEN_C;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        // No offloads: the guest gets plain frames, as no GSO/CSUM feature is negotiated.
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame; `WouldBlock` when none is queued.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameSink for Tap {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            // A full tap queue drops the frame, as a real NIC would.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}
