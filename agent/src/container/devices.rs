//! The device nodes and links every container's /dev has.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

use super::sync::InitFailure;

/// Character devices copied from the guest's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Links in /dev: (name, target).
const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Fills `<rootfs>/dev` with the standard devices and links it lacks.
pub fn populate(rootfs: &Path) -> Result<(), InitFailure> {
    let dev = rootfs.join("dev");
    for name in DEVICES {
        let dest = dev.join(name);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        let source = Path::new("/dev").join(name);
        let meta = match fs::metadata(&source) {
            Ok(meta) if meta.file_type().is_char_device() => meta,
            _ => {
                tracing::debug!(device = name, "not in the guest's /dev");
                continue;
            }
        };
        create_device(&source, &dest, meta.rdev())
            .map_err(|e| InitFailure::os(format!("create /dev/{name}"), e))?;
    }
    for (name, target) in LINKS {
        let dest = dev.join(name);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, &dest).map_err(|e| {
            InitFailure::os(
                format!("link /dev/{name}"),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    Ok(())
}

/// A node with the guest device's number, or a bind mount of it where mknod is refused.
fn create_device(source: &Path, dest: &Path, rdev: u64) -> Result<(), Errno> {
    let mode = Mode::from_bits_truncate(0o666);
    match mknod(dest, SFlag::S_IFCHR, mode, rdev) {
        Ok(()) => {
            // mknod applies the umask; devices are world-usable.
            nix::sys::stat::fchmodat(
                None,
                dest,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
        }
        Err(Errno::EPERM) => {
            fs::File::create(dest)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            mount(
                Some(source),
                dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        }
        Err(err) => Err(err),
    }
}
