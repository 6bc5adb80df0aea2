//! The block-device rootfs (`[runtime] rootfs = "block"`): a container's read-only image
//! layers turned into an erofs image, attached to the VM as a read-only virtio-blk disk.
//!
//! erofs rather than ext4: it is made for read-only images (no journal, no free-space
//! reserve, no size to guess before `mkfs.ext4 -d` can run), its images are smaller and
//! faster to build, and the guest kernel has `CONFIG_EROFS_FS=y`.
//!
//! Images are cached under `runtime.rootfs_cache_dir`, named by a key that changes whenever
//! the content can: containerd's committed snapshot layers never change, so their paths are
//! the key; a plain directory adds a fingerprint of every entry's metadata (ctime changes on
//! every write). A build writes a temporary file and renames it into place, so two sandboxes
//! building the same image at once each produce a whole image and the last rename wins. The
//! cache is trimmed, least recently used first, to `runtime.rootfs_cache_max_mib`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};

use crate::config::{Config, RootfsMode};
use crate::hypervisor::VmDisk;
use crate::rootfs::{validate, RootfsError, RootfsSource};

/// The filesystem of the images.
pub const FS_TYPE: &str = "erofs";
/// The program that builds them (Debian's erofs-utils).
pub const MKFS: &str = "mkfs.erofs";
/// Longest virtio-blk serial (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_LEN: usize = 20;
/// Suffix of the cached images.
const IMAGE_SUFFIX: &str = ".erofs";

/// Errors building a root image.
#[derive(Debug, thiserror::Error)]
pub enum BlockRootfsError {
    /// The source is not usable at all.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
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
    /// mkfs.erofs could not run or failed.
    #[error("Build root image {image} with {MKFS}: {reason}")]
    Mkfs {
        /// The image being built.
        image: PathBuf,
        /// Its error output or why it did not start.
        reason: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BlockRootfsError {
    let path = path.to_path_buf();
    move |source| BlockRootfsError::Io { op, path, source }
}

/// What an image is made of: read-only layers, topmost first, and its cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The layers, topmost first (overlayfs `lowerdir` order).
    pub layers: Vec<PathBuf>,
    /// Cache key: hex SHA-256 of what identifies the content.
    pub key: String,
}

/// Whether a root can be a block image, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// An image of these layers.
    Image(ImageSource),
    /// Stays on virtio-fs, for this reason.
    Virtiofs(&'static str),
}

/// Decides how `source` can be served as a block device; reads only metadata.
pub fn plan(source: &RootfsSource) -> Result<Plan, BlockRootfsError> {
    match source {
        RootfsSource::Bind(_) => Ok(Plan::Virtiofs(
            "the container writes into its root directory (--rootfs), which a read-only image cannot hold",
        )),
        RootfsSource::Overlay(dir) => {
            validate(dir)?;
            Ok(Plan::Image(directory_image(dir)?))
        }
        RootfsSource::Mounts(list) => {
            let [m] = list.as_slice() else {
                return Ok(Plan::Virtiofs(if list.is_empty() {
                    "the rootfs mount list is empty"
                } else {
                    "the rootfs is a stack of several mounts"
                }));
            };
            let (flags, data) = m.flags_and_data();
            if flags.contains(MsFlags::MS_BIND) {
                if !flags.contains(MsFlags::MS_RDONLY) {
                    return Ok(Plan::Virtiofs(
                        "the rootfs is a writable bind mount: the container's writes must land in it",
                    ));
                }
                let dir = PathBuf::from(&m.source);
                validate(&dir)?;
                return Ok(Plan::Image(directory_image(&dir)?));
            }
            if m.fs_type != "overlay" {
                return Ok(Plan::Virtiofs("the rootfs is neither an overlay nor a bind mount"));
            }
            let mut lower = None;
            let mut upper = None;
            for option in data.split(',') {
                if let Some(v) = option.strip_prefix("lowerdir=") {
                    lower = Some(v);
                } else if let Some(v) = option.strip_prefix("upperdir=") {
                    upper = Some(v);
                }
            }
            let Some(lower) = lower.filter(|l| !l.is_empty()) else {
                return Ok(Plan::Virtiofs("the overlay has no lowerdir"));
            };
            if let Some(upper) = upper {
                let upper = Path::new(upper);
                let mut entries = std::fs::read_dir(upper).map_err(io_err("Read", upper))?;
                if entries.next().is_some() {
                    return Ok(Plan::Virtiofs(
                        "the overlay's upper layer already holds files, which the read-only layers lack",
                    ));
                }
            }
            let layers: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
            for layer in &layers {
                if !layer.is_dir() {
                    return Err(RootfsError::NotADirectory(layer.clone()).into());
                }
            }
            Ok(Plan::Image(snapshot_image(layers)))
        }
    }
}

/// Committed snapshot layers never change: their paths identify the content.
fn snapshot_image(layers: Vec<PathBuf>) -> ImageSource {
    let mut hash = Sha256::new();
    hash.update(b"layers\0");
    for layer in &layers {
        hash.update(layer.as_os_str().as_encoded_bytes());
        hash.update(b"\0");
    }
    ImageSource {
        layers,
        key: hex(&hash.finalize()),
    }
}

/// A directory can change: its path and a fingerprint of every entry's metadata.
fn directory_image(dir: &Path) -> Result<ImageSource, BlockRootfsError> {
    let mut hash = Sha256::new();
    hash.update(b"dir\0");
    hash.update(dir.as_os_str().as_encoded_bytes());
    hash.update(b"\0");
    let root_dev = std::fs::symlink_metadata(dir)
        .map_err(io_err("Stat", dir))?
        .dev();
    fingerprint(dir, root_dev, &mut hash)?;
    Ok(ImageSource {
        layers: vec![dir.to_path_buf()],
        key: hex(&hash.finalize()),
    })
}

/// Hashes the name and metadata (inode, mode, owner, size, mtime, ctime) of every entry
/// under `dir` in a fixed order, without following symlinks or leaving the filesystem.
fn fingerprint(dir: &Path, dev: u64, hash: &mut Sha256) -> Result<(), BlockRootfsError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err("Read", dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err("Read", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("Stat", &path))?;
        hash.update(entry.file_name().as_encoded_bytes());
        for n in [
            meta.ino(),
            u64::from(meta.mode()),
            u64::from(meta.uid()),
            u64::from(meta.gid()),
            meta.size(),
            meta.rdev(),
        ] {
            hash.update(n.to_le_bytes());
        }
        for n in [
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ] {
            hash.update(n.to_le_bytes());
        }
        if meta.is_dir() && meta.dev() == dev {
            hash.update(b"{");
            fingerprint(&path, dev, hash)?;
            hash.update(b"}");
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The virtio-blk serial of a container's root disk: `rootfs-` and the start of its id,
/// within the 20 bytes a serial holds.
pub fn serial_for(container_id: &str) -> String {
    let mut serial = String::from("rootfs-");
    serial.extend(
        container_id
            .chars()
            .filter(char::is_ascii)
            .take(MAX_SERIAL_LEN - serial.len()),
    );
    serial
}

/// The image cache.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ImageCache {
    /// A cache in `dir`, trimmed to `max_mib`.
    pub fn new(dir: &Path, max_mib: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            max_bytes: max_mib.saturating_mul(1024 * 1024),
        }
    }

    /// Where the image with `key` lives.
    pub fn image_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{IMAGE_SUFFIX}"))
    }

    /// The image of `source`: from the cache, or built now. `scratch` is an empty-or-missing
    /// directory the build may use (to merge several layers), removed again before return.
    pub fn get_or_build(
        &self,
        source: &ImageSource,
        scratch: &Path,
    ) -> Result<PathBuf, BlockRootfsError> {
        let image = self.image_path(&source.key);
        if image.is_file() {
            touch(&image);
            tracing::debug!(image = %image.display(), "root image from cache");
            return Ok(image);
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err("Create", &self.dir))?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            source.key,
            std::process::id(),
            crate::state::random_id()
        ));
        let built = build(&source.layers, &tmp, scratch)
            .and_then(|()| std::fs::rename(&tmp, &image).map_err(io_err("Rename", &tmp)));
        if let Err(e) = built {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        tracing::info!(image = %image.display(), "root image built");
        self.trim(&image);
        Ok(image)
    }

    /// Removes the least recently used images until the cache fits its bound, sparing
    /// `keep`; a VM that has one open keeps reading it after the unlink.
    pub fn trim(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut images: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(IMAGE_SUFFIX))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = images.iter().map(|(_, len, _)| len).sum();
        images.sort();
        for (_, len, path) in images {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total = total.saturating_sub(len);
                    tracing::debug!(image = %path.display(), "root image evicted");
                }
                Err(e) => tracing::warn!(image = %path.display(), error = %e, "evict root image"),
            }
        }
    }
}

/// Marks an image as just used (its mtime orders the eviction).
fn touch(image: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(image) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Builds the erofs image of `layers` (merged by a read-only overlay when there are several)
/// into `out`.
fn build(layers: &[PathBuf], out: &Path, scratch: &Path) -> Result<(), BlockRootfsError> {
    match layers {
        [] => Err(RootfsError::NoMounts.into()),
        [dir] => mkfs(dir, out),
        _ => {
            let merged = MergedLayers::mount(layers, scratch)?;
            let result = mkfs(&merged.target, out);
            drop(merged);
            result
        }
    }
}

fn mkfs(dir: &Path, out: &Path) -> Result<(), BlockRootfsError> {
    let output = std::process::Command::new(MKFS)
        .arg("--quiet")
        .arg(out)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| BlockRootfsError::Mkfs {
            image: out.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                format!("{MKFS} is not installed (Debian package erofs-utils)")
            } else {
                e.to_string()
            },
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(BlockRootfsError::Mkfs {
            image: out.to_path_buf(),
            reason: format!("{}: {}", output.status, stderr.trim()),
        });
    }
    Ok(())
}

/// Several layers merged by a read-only overlay in a scratch directory; unmounted and
/// removed on drop.
struct MergedLayers {
    scratch: PathBuf,
    target: PathBuf,
    mounted: bool,
}

impl MergedLayers {
    fn mount(layers: &[PathBuf], scratch: &Path) -> Result<Self, BlockRootfsError> {
        let target = scratch.join("merged");
        std::fs::create_dir_all(&target).map_err(io_err("Create", &target))?;
        let mut merged = Self {
            scratch: scratch.to_path_buf(),
            target,
            mounted: false,
        };
        let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        let data = format!("lowerdir={}", lower.join(":"));
        mount(
            Some("overlay"),
            &merged.target,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(data.as_str()),
        )
        .map_err(|e| io_err("Mount the image layers at", &merged.target)(e.into()))?;
        merged.mounted = true;
        Ok(merged)
    }
}

impl Drop for MergedLayers {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = umount2(&self.target, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %self.target.display(), error = %e, "unmount merged layers");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.scratch.display(), error = %e, "remove build scratch");
            }
        }
    }
}

/// A container known when the VM is created, whose root may become a boot disk.
#[derive(Debug, Clone)]
pub struct BootContainer {
    /// Its id; `None`: the sandbox's own id (as `runv run` names its container).
    pub id: Option<String>,
    /// Its root.
    pub rootfs: RootfsSource,
}

/// What the agent is told about a block root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRoot {
    /// The disk's serial.
    pub serial: String,
    /// Its filesystem.
    pub fs_type: &'static str,
}

/// A sandbox's block roots: disks prepared before boot, then taken by their containers.
/// QEMU's microvm has no hotplug, so only containers known at boot get one.
#[derive(Debug, Default)]
pub struct BlockRoots {
    mode: RootfsMode,
    pending: BTreeMap<String, (RootfsSource, VmDisk)>,
    disks: Vec<VmDisk>,
    in_use: BTreeSet<String>,
}

impl BlockRoots {
    /// Builds (or finds in the cache) the image of `first`'s root when the config asks for
    /// block roots and the root can be one; `scratch` is a directory the build may use.
    pub async fn prepare(
        config: &Config,
        sandbox_id: &str,
        first: Option<BootContainer>,
        scratch: PathBuf,
    ) -> Result<Self, BlockRootfsError> {
        let mut roots = Self {
            mode: config.runtime.rootfs,
            ..Self::default()
        };
        let Some(first) = first.filter(|_| roots.mode == RootfsMode::Block) else {
            return Ok(roots);
        };
        let id = first.id.unwrap_or_else(|| sandbox_id.to_string());
        let cache = ImageCache::new(
            &config.runtime.rootfs_cache_dir,
            config.runtime.rootfs_cache_max_mib,
        );
        let source = first.rootfs.clone();
        let built = tokio::task::spawn_blocking(move || match plan(&source)? {
            Plan::Image(image) => cache.get_or_build(&image, &scratch).map(Ok),
            Plan::Virtiofs(why) => Ok(Err(why)),
        })
        .await
        .map_err(|e| BlockRootfsError::Mkfs {
            image: config.runtime.rootfs_cache_dir.clone(),
            reason: format!("build task: {e}"),
        })??;
        match built {
            Ok(path) => {
                let disk = VmDisk {
                    path,
                    serial: serial_for(&id),
                };
                tracing::info!(sandbox = sandbox_id, container = %id, image = %disk.path.display(),
                    serial = %disk.serial, "container root on a block device");
                roots.disks.push(disk.clone());
                roots.pending.insert(id, (first.rootfs, disk));
            }
            Err(why) => {
                tracing::info!(sandbox = sandbox_id, container = %id, "container root stays on virtio-fs: {why}");
            }
        }
        Ok(roots)
    }

    /// The disks the VM boots with.
    pub fn disks(&self) -> &[VmDisk] {
        &self.disks
    }

    /// The block root prepared for container `id` with root `rootfs`, if any; `None` means
    /// the container's root goes over virtio-fs.
    pub fn take(&mut self, sandbox_id: &str, id: &str, rootfs: &RootfsSource) -> Option<BlockRoot> {
        if self.mode != RootfsMode::Block {
            return None;
        }
        match self.pending.remove(id) {
            Some((prepared, disk)) if &prepared == rootfs => {
                self.in_use.insert(id.to_string());
                Some(BlockRoot {
                    serial: disk.serial,
                    fs_type: FS_TYPE,
                })
            }
            Some(_) => {
                tracing::info!(sandbox = sandbox_id, container = id,
                    "container root falls back to virtio-fs: its root differs from the one given at boot");
                None
            }
            None => {
                tracing::debug!(sandbox = sandbox_id, container = id,
                    "container root falls back to virtio-fs: disks can only be attached when the VM boots");
                None
            }
        }
    }

    /// Whether container `id` runs on its block root.
    pub fn in_use(&self, id: &str) -> bool {
        self.in_use.contains(id)
    }

    /// Container `id` is gone; its disk stays attached (no hot-unplug) but unused.
    pub fn release(&mut self, id: &str) {
        self.in_use.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::RootMount;

    fn overlay(lower: &str, upper: &Path) -> RootfsSource {
        RootfsSource::Mounts(vec![RootMount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={lower}"),
                format!("upperdir={}", upper.display()),
                "workdir=/w".into(),
            ],
        }])
    }

    #[test]
    fn plans_images_for_read_only_layers_and_virtiofs_for_writable_roots() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, up) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("up"),
        );
        for d in [&a, &b, &up] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(a.join("f"), "x").unwrap();
        assert!(matches!(
            plan(&RootfsSource::Bind(a.clone())).unwrap(),
            Plan::Virtiofs(_)
        ));
        let lower = format!("{}:{}", a.display(), b.display());
        let Plan::Image(img) = plan(&overlay(&lower, &up)).unwrap() else {
            panic!("an overlay with an empty upper layer is an image");
        };
        assert_eq!(img.layers, vec![a.clone(), b.clone()]);
        // Snapshot layers are keyed on their paths alone.
        std::fs::write(b.join("g"), "y").unwrap();
        let Plan::Image(again) = plan(&overlay(&lower, &up)).unwrap() else {
            panic!()
        };
        assert_eq!(img.key, again.key);
        std::fs::write(up.join("w"), "w").unwrap();
        assert!(matches!(
            plan(&overlay(&lower, &up)).unwrap(),
            Plan::Virtiofs(_)
        ));
        let rw_bind = RootfsSource::Mounts(vec![RootMount {
            fs_type: "bind".into(),
            source: a.display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
        }]);
        assert!(matches!(plan(&rw_bind).unwrap(), Plan::Virtiofs(_)));
        let ro_bind = RootfsSource::Mounts(vec![RootMount {
            fs_type: "bind".into(),
            source: a.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        }]);
        assert!(matches!(plan(&ro_bind).unwrap(), Plan::Image(_)));
        let missing = format!("{}:/nonexistent-layer", a.display());
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = plan(&overlay(&missing, &empty)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-layer"), "{err}");
    }

    #[test]
    fn directory_key_follows_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), "1").unwrap();
        let key = |d: &Path| match plan(&RootfsSource::Overlay(d.to_path_buf())).unwrap() {
            Plan::Image(img) => img.key,
            Plan::Virtiofs(why) => panic!("{why}"),
        };
        let first = key(dir.path());
        assert_eq!(first, key(dir.path()));
        std::fs::write(dir.path().join("sub/f"), "22").unwrap();
        let second = key(dir.path());
        assert_ne!(first, second, "a deep write changes the key");
        std::fs::write(dir.path().join("sub/new"), "").unwrap();
        assert_ne!(second, key(dir.path()));
    }

    #[test]
    fn serial_names_the_container_within_twenty_bytes() {
        assert_eq!(serial_for("c1"), "rootfs-c1");
        let long = serial_for(&"a".repeat(64));
        assert_eq!(long.len(), MAX_SERIAL_LEN);
        assert!(long.starts_with("rootfs-aaa"));
    }

    #[test]
    fn cache_trims_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path(), 1);
        let old = cache.image_path("old");
        let new = cache.image_path("new");
        std::fs::write(&old, vec![0u8; 700 * 1024]).unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000))
            .unwrap();
        std::fs::write(&new, vec![0u8; 700 * 1024]).unwrap();
        std::fs::write(dir.path().join("other"), vec![0u8; 2048 * 1024]).unwrap();
        cache.trim(&new);
        assert!(!old.exists());
        assert!(new.exists(), "the image in use stays");
        assert!(dir.path().join("other").exists(), "only images are evicted");
    }

    #[test]
    fn builds_an_erofs_image_once_and_reuses_it() {
        if !nix::unistd::Uid::effective().is_root()
            || crate::config::resolve_binary(Path::new(MKFS)).is_none()
        {
            eprintln!("skipped: needs root and {MKFS}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("top"), "t").unwrap();
        std::fs::write(b.join("bottom"), "b").unwrap();
        let cache = ImageCache::new(&dir.path().join("cache"), 64);
        let source = snapshot_image(vec![a, b]);
        let scratch = dir.path().join("scratch");
        let image = cache.get_or_build(&source, &scratch).unwrap();
        let bytes = std::fs::read(&image).unwrap();
        // The erofs superblock magic at offset 1024.
        assert_eq!(&bytes[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
        assert!(!scratch.exists(), "the merge directory is gone");
        let names: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
        assert_eq!(cache.get_or_build(&source, &scratch).unwrap(), image);
        let err = ImageCache::new(&dir.path().join("c2"), 64)
            .get_or_build(&snapshot_image(vec![dir.path().join("none")]), &scratch)
            .unwrap_err();
        assert!(err.to_string().contains(MKFS), "{err}");
    }
}
