//! A container root on a read-only virtio-blk disk: the disk is found by its serial,
//! mounted read-only, and covered by a writable overlay whose upper and work directories
//! live on a tmpfs, so the container's writes stay in guest memory and go with it.
//!
//! Layout under `<base>/<container id>/`: `disk` (a device node made from sysfs, when
//! devtmpfs has none), `image` (the read-only filesystem), `rw` (the tmpfs with `upper` and
//! `work`) and `root` (the overlay the container gets).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// Where block roots are assembled in the guest.
pub const BLOCK_ROOT_BASE: &str = "/run/runv/block";
/// Where the guest kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";
/// Filesystems a root disk may hold.
pub const FS_TYPES: [&str; 2] = ["erofs", "ext4"];

/// Errors setting up or tearing down a block root; each names the disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockRootError {
    /// The filesystem type is not one runv builds.
    #[error("rootfs.block_fs_type: {0:?} is not one of erofs, ext4")]
    FsType(String),
    /// The serial is empty or could not name a disk.
    #[error("rootfs.block_serial: {0:?} is not a disk serial")]
    Serial(String),
    /// No virtio disk has the serial.
    #[error("block rootfs disk {serial:?}: no disk in {sys_block} has this serial")]
    NotFound { serial: String, sys_block: String },
    /// An operation on the disk failed.
    #[error("block rootfs disk {serial:?} ({device}): {what}: {source}")]
    Os {
        serial: String,
        device: String,
        what: String,
        source: Errno,
    },
}

/// Checks the request's block fields before anything is made.
pub fn validate(serial: &str, fs_type: &str) -> Result<(), BlockRootError> {
    if !FS_TYPES.contains(&fs_type) {
        return Err(BlockRootError::FsType(fs_type.to_string()));
    }
    if serial.is_empty() || serial.len() > 20 || !serial.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BlockRootError::Serial(serial.to_string()));
    }
    Ok(())
}

/// The root directory container `id` gets from its block root under `base`.
pub fn root_path(base: &Path, id: &str) -> PathBuf {
    base.join(id).join("root")
}

/// The block device (`vda`, ...) whose serial is `serial`.
pub fn find_disk(sys_block: &Path, serial: &str) -> Result<String, BlockRootError> {
    let not_found = || BlockRootError::NotFound {
        serial: serial.to_string(),
        sys_block: sys_block.display().to_string(),
    };
    let entries = std::fs::read_dir(sys_block).map_err(|_| not_found())?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|name| {
            std::fs::read_to_string(sys_block.join(name).join("serial"))
                .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial)
        })
        .ok_or_else(not_found)
}

/// A mounted block root; unmounted (overlay, tmpfs, image) and removed on drop.
#[derive(Debug)]
pub struct BlockRoot {
    serial: String,
    device: String,
    dir: PathBuf,
    /// Mount points, in the order they were made.
    mounts: Vec<PathBuf>,
}

impl BlockRoot {
    /// Finds the disk with `serial` under `sys_block` and assembles the root of container
    /// `id` under `base`. On failure nothing of it is left.
    pub fn mount(
        sys_block: &Path,
        base: &Path,
        id: &str,
        serial: &str,
        fs_type: &str,
    ) -> Result<Self, BlockRootError> {
        validate(serial, fs_type)?;
        let device = find_disk(sys_block, serial)?;
        let mut root = Self {
            serial: serial.to_string(),
            device: format!("/dev/{device}"),
            dir: base.join(id),
            mounts: Vec::new(),
        };
        // On any error below, dropping `root` undoes what was done.
        let dev_numbers = std::fs::read_to_string(sys_block.join(&device).join("dev"))
            .map_err(|e| root.io("read its device number", &e))?;
        let (major, minor) = parse_dev(&dev_numbers)
            .ok_or_else(|| root.err(format!("device number {dev_numbers:?}"), Errno::EINVAL))?;
        for sub in ["image", "rw", "root"] {
            std::fs::create_dir_all(root.dir.join(sub))
                .map_err(|e| root.io(&format!("create {}", root.dir.join(sub).display()), &e))?;
        }
        // The guest's devtmpfs node if there is one; else a node of our own (which needs a
        // filesystem mounted without nodev).
        let devtmpfs_node = Path::new("/dev").join(&device);
        let node = if sys_block == Path::new(SYS_BLOCK) && devtmpfs_node.exists() {
            devtmpfs_node
        } else {
            let node = root.dir.join("disk");
            mknod(
                &node,
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )
            .map_err(|e| root.err(format!("create device node {}", node.display()), e))?;
            node
        };
        let image = root.dir.join("image");
        root.mount_at(
            Some(node.as_path()),
            &image,
            fs_type,
            MsFlags::MS_RDONLY,
            None,
            &format!("mount {fs_type} read-only"),
        )?;
        let rw = root.dir.join("rw");
        root.mount_at(
            None,
            &rw,
            "tmpfs",
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some("mode=0700"),
            "mount tmpfs for the writable layer",
        )?;
        for sub in ["upper", "work"] {
            std::fs::create_dir(rw.join(sub))
                .map_err(|e| root.io(&format!("create {}", rw.join(sub).display()), &e))?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.display(),
            rw.join("upper").display(),
            rw.join("work").display()
        );
        let target = root.dir.join("root");
        root.mount_at(
            None,
            &target,
            "overlay",
            MsFlags::empty(),
            Some(&data),
            "mount the writable overlay",
        )?;
        tracing::info!(container = id, serial, device = %root.device, fs_type, "block rootfs mounted");
        Ok(root)
    }

    fn mount_at(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fs_type: &str,
        flags: MsFlags,
        data: Option<&str>,
        what: &str,
    ) -> Result<(), BlockRootError> {
        let source = source.unwrap_or(Path::new(fs_type));
        mount(Some(source), target, Some(fs_type), flags, data)
            .map_err(|e| self.err(format!("{what} at {}", target.display()), e))?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    fn err(&self, what: String, source: Errno) -> BlockRootError {
        BlockRootError::Os {
            serial: self.serial.clone(),
            device: self.device.clone(),
            what,
            source,
        }
    }

    fn io(&self, what: &str, e: &std::io::Error) -> BlockRootError {
        self.err(
            what.to_string(),
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    }

    /// Unmounts everything (detaching what is still busy) and removes the directory.
    pub fn unmount(&mut self) -> Result<(), BlockRootError> {
        while let Some(target) = self.mounts.pop() {
            let mut result = umount2(&target, MntFlags::empty());
            if result == Err(Errno::EBUSY) {
                result = umount2(&target, MntFlags::MNT_DETACH);
            }
            if let Err(e) = result {
                self.mounts.push(target.clone());
                return Err(self.err(format!("unmount {}", target.display()), e));
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&format!("remove {}", self.dir.display()), &e)),
        }
    }
}

impl Drop for BlockRoot {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            tracing::warn!(%err, "block rootfs cleanup");
        }
    }
}

fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys_block(disks: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, serial) in disks {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("serial"), format!("{serial}\n")).unwrap();
            std::fs::write(d.join("dev"), "254:0\n").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("loop0")).unwrap();
        dir
    }

    #[test]
    fn finds_the_disk_by_serial() {
        let sys = fake_sys_block(&[("vda", "rootfs-a"), ("vdb", "rootfs-b")]);
        assert_eq!(find_disk(sys.path(), "rootfs-b").unwrap(), "vdb");
        let err = find_disk(sys.path(), "rootfs-c").unwrap_err();
        assert!(err.to_string().contains("\"rootfs-c\""), "{err}");
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        assert!(validate("rootfs-a", "erofs").is_ok());
        assert!(validate("rootfs-a", "ext4").is_ok());
        let err = validate("rootfs-a", "xfs").unwrap_err();
        assert!(
            err.to_string().starts_with("rootfs.block_fs_type: \"xfs\""),
            "{err}"
        );
        let err = validate("", "erofs").unwrap_err();
        assert!(err.to_string().starts_with("rootfs.block_serial"), "{err}");
        assert!(validate(&"x".repeat(21), "erofs").is_err());
        assert_eq!(parse_dev("254:16\n"), Some((254, 16)));
        assert_eq!(parse_dev("junk"), None);
    }

    #[test]
    fn failed_mount_leaves_nothing() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // A fake disk whose device number names no real disk: mknod works, mount fails.
        let sys = fake_sys_block(&[("vda", "rootfs-a")]);
        std::fs::write(sys.path().join("vda/dev"), "4095:1048575\n").unwrap();
        let base = tempfile::tempdir().unwrap();
        let err = BlockRoot::mount(sys.path(), base.path(), "c1", "rootfs-a", "erofs").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("block rootfs disk \"rootfs-a\" (/dev/vda): mount erofs read-only"),
            "{text}"
        );
        assert!(!base.path().join("c1").exists());
    }
}
