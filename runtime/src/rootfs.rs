//! A container's root filesystem on the host, placed into the sandbox's shared directory
//! (which virtiofsd exports to the guest).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors preparing a container root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The root directory does not exist.
    #[error("Rootfs {0} does not exist")]
    Missing(PathBuf),
    /// It is not a directory.
    #[error("Rootfs {0} is not a directory")]
    NotADirectory(PathBuf),
    /// It is empty: nothing to run.
    #[error("Rootfs {0} is empty")]
    Empty(PathBuf),
    /// A mount list without a single mount.
    #[error("The rootfs mount list is empty")]
    NoMounts,
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What runv was doing.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How the container sees its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// The directory itself, read-write: the container's writes land in it (as with runc).
    Bind(PathBuf),
    /// The directory as the read-only lower layer of an overlay whose upper layer belongs to
    /// this sandbox: the image stays untouched and the writes go when the sandbox goes.
    Overlay(PathBuf),
    /// A list of mounts made in order at the target, as containerd hands them to a shim
    /// (typically one overlay of the image's snapshot layers).
    Mounts(Vec<RootMount>),
}

/// One mount of a [`RootfsSource::Mounts`] list, in containerd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub fs_type: String,
    /// Source (a device, a directory, or a name such as `overlay`).
    pub source: String,
    /// Options, as for mount(8): flags such as `ro` or `rbind`, and filesystem data.
    pub options: Vec<String>,
}

impl RootMount {
    /// The mount flags and the filesystem data the options stand for.
    pub fn flags_and_data(&self) -> (MsFlags, String) {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        if self.fs_type == "bind" {
            flags |= MsFlags::MS_BIND;
        }
        for option in &self.options {
            match option.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" | "defaults" => {}
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                "relatime" => flags |= MsFlags::MS_RELATIME,
                other => data.push(other),
            }
        }
        (flags, data.join(","))
    }
}

impl RootfsSource {
    /// The directory the root comes from, for the directory sources.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            RootfsSource::Bind(p) | RootfsSource::Overlay(p) => Some(p),
            RootfsSource::Mounts(_) => None,
        }
    }
}

/// Checks that `dir` is a non-empty directory, before any VM starts.
pub fn validate(dir: &Path) -> Result<(), RootfsError> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RootfsError::Missing(dir.to_path_buf()))
        }
        Err(source) => {
            return Err(RootfsError::Io {
                op: "Stat",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(RootfsError::NotADirectory(dir.to_path_buf()));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|source| RootfsError::Io {
        op: "Read",
        path: dir.to_path_buf(),
        source,
    })?;
    if entries.next().is_none() {
        return Err(RootfsError::Empty(dir.to_path_buf()));
    }
    Ok(())
}

/// The sandbox's shared directory, made a mount point of its own with shared propagation, so
/// that container roots mounted into it after virtiofsd started (virtiofsd works in a mount
/// namespace it copied at start) show up in virtiofsd's view too.
#[derive(Debug)]
pub struct SharedDir {
    path: PathBuf,
    mounted: bool,
}

impl SharedDir {
    /// Creates `path` and turns it into a shared bind mount of itself.
    pub fn prepare(path: &Path) -> Result<Self, RootfsError> {
        let err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source: std::io::Error| RootfsError::Io { op, path, source }
        };
        std::fs::create_dir_all(path).map_err(err("Create"))?;
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("Bind-mount shared directory")(e.into()))?;
        let mut shared = Self {
            path: path.to_path_buf(),
            mounted: true,
        };
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| err("Make shared")(e.into()))?;
        shared.mounted = true;
        Ok(shared)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts it (everything below must be unmounted first, or is detached with it).
    pub fn release(&mut self) -> Result<(), RootfsError> {
        if self.mounted {
            umount2(&self.path, MntFlags::MNT_DETACH).map_err(|e| RootfsError::Io {
                op: "Unmount shared directory",
                path: self.path.clone(),
                source: e.into(),
            })?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "shared directory cleanup");
        }
    }
}

/// A container root mounted into the shared directory; unmounted on [`Self::unmount`] or drop.
#[derive(Debug)]
pub struct MountedRootfs {
    target: PathBuf,
    scratch: Option<PathBuf>,
    /// How many mounts are stacked at the target.
    mounted: usize,
}

impl MountedRootfs {
    /// Mounts `source` at `target` (created if needed). An overlay keeps its upper and work
    /// directories in `scratch`, outside what the guest sees.
    pub fn mount(
        source: &RootfsSource,
        target: &Path,
        scratch: &Path,
    ) -> Result<Self, RootfsError> {
        match source {
            RootfsSource::Mounts(list) if list.is_empty() => return Err(RootfsError::NoMounts),
            RootfsSource::Mounts(_) => {}
            RootfsSource::Bind(dir) | RootfsSource::Overlay(dir) => validate(dir)?,
        }
        let err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| RootfsError::Io { op, path, source }
        };
        std::fs::create_dir_all(target).map_err(err("Create", target))?;
        let mut mounted = Self {
            target: target.to_path_buf(),
            scratch: None,
            mounted: 0,
        };
        match source {
            RootfsSource::Bind(dir) => {
                mount(
                    Some(dir),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| err("Bind-mount rootfs at", target)(e.into()))?;
            }
            RootfsSource::Overlay(dir) => {
                let upper = scratch.join("upper");
                let work = scratch.join("work");
                mounted.scratch = Some(scratch.to_path_buf());
                std::fs::create_dir_all(&upper).map_err(err("Create", &upper))?;
                std::fs::create_dir_all(&work).map_err(err("Create", &work))?;
                let options = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    dir.display(),
                    upper.display(),
                    work.display()
                );
                mount(
                    Some("overlay"),
                    target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(options.as_str()),
                )
                .map_err(|e| err("Mount overlay rootfs at", target)(e.into()))?;
            }
            RootfsSource::Mounts(list) => {
                for m in list {
                    let (flags, data) = m.flags_and_data();
                    let fs_type = (!flags.contains(MsFlags::MS_BIND)).then_some(m.fs_type.as_str());
                    let data = (!data.is_empty()).then_some(data.as_str());
                    // On failure, what is already stacked comes off as `mounted` drops.
                    mount(Some(m.source.as_str()), target, fs_type, flags, data)
                        .map_err(|e| err("Mount rootfs at", target)(e.into()))?;
                    mounted.mounted += 1;
                }
                return Ok(mounted);
            }
        }
        mounted.mounted = 1;
        Ok(mounted)
    }

    /// Where it is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts it (recursively, detaching if busy) and removes the overlay scratch space.
    pub fn unmount(&mut self) -> Result<(), RootfsError> {
        while self.mounted > 0 {
            let mut result = umount2(&self.target, MntFlags::empty());
            if result == Err(nix::errno::Errno::EBUSY) {
                result = umount2(&self.target, MntFlags::MNT_DETACH);
            }
            result.map_err(|e| RootfsError::Io {
                op: "Unmount rootfs",
                path: self.target.clone(),
                source: e.into(),
            })?;
            self.mounted -= 1;
        }
        if let Some(scratch) = self.scratch.take() {
            std::fs::remove_dir_all(&scratch).map_err(|source| RootfsError::Io {
                op: "Remove",
                path: scratch,
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for MountedRootfs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "rootfs cleanup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(
            validate(&missing).unwrap_err().to_string(),
            format!("Rootfs {} does not exist", missing.display())
        );
        assert!(matches!(validate(dir.path()), Err(RootfsError::Empty(_))));
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            validate(&file),
            Err(RootfsError::NotADirectory(_))
        ));
        validate(dir.path()).unwrap();
    }

    fn is_mount_point(path: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = path.to_string_lossy();
        mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
    }

    #[test]
    fn bind_and_overlay_mount_and_unmount() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("hello"), "hi").unwrap();

        let target = dir.path().join("bind");
        let mut m = MountedRootfs::mount(
            &RootfsSource::Bind(image.clone()),
            &target,
            &dir.path().join("s1"),
        )
        .unwrap();
        assert!(is_mount_point(&target));
        std::fs::write(target.join("written"), "w").unwrap();
        m.unmount().unwrap();
        assert!(!is_mount_point(&target));
        assert!(
            image.join("written").exists(),
            "a bind rootfs keeps the container's writes"
        );

        let target = dir.path().join("ovl");
        let scratch = dir.path().join("s2");
        let m =
            MountedRootfs::mount(&RootfsSource::Overlay(image.clone()), &target, &scratch).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("hello")).unwrap(), "hi");
        std::fs::write(target.join("new"), "n").unwrap();
        drop(m);
        assert!(!is_mount_point(&target));
        assert!(
            !image.join("new").exists(),
            "an overlay rootfs leaves the image untouched"
        );
        assert!(!scratch.exists());

        let target = dir.path().join("list");
        let lower2 = dir.path().join("lower2");
        std::fs::create_dir_all(&lower2).unwrap();
        std::fs::write(lower2.join("top"), "t").unwrap();
        let (upper, work) = (dir.path().join("up"), dir.path().join("wk"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let list = RootfsSource::Mounts(vec![RootMount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", lower2.display(), image.display()),
            ],
        }]);
        let m = MountedRootfs::mount(&list, &target, &dir.path().join("s3")).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("hello")).unwrap(), "hi");
        assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "t");
        drop(m);
        assert!(!is_mount_point(&target));
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let m = RootMount {
            fs_type: "bind".into(),
            source: "/x".into(),
            options: vec![
                "rbind".into(),
                "ro".into(),
                "lowerdir=/a".into(),
                "xino=off".into(),
            ],
        };
        let (flags, data) = m.flags_and_data();
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(data, "lowerdir=/a,xino=off");
        assert!(matches!(
            MountedRootfs::mount(
                &RootfsSource::Mounts(vec![]),
                Path::new("/nonexistent/t"),
                Path::new("/x")
            ),
            Err(RootfsError::NoMounts)
        ));
    }
}
