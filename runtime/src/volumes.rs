//! Host bind mounts (volumes) of a container, shared with the guest through the sandbox's
//! shared directory.
//!
//! Every bind mount of a host path in a container's spec is bind-mounted on the host to
//! `<shared>/<container>/volumes/<n>` (`n` is the mount's index in the spec), which virtiofsd
//! exports with the rest of the shared directory; the spec the agent gets names the guest
//! path of that mount instead of the host path, and the agent bind-mounts it into the
//! container as it does any bind mount. A read-only volume is made read-only on the host,
//! before it becomes visible to virtiofsd: the guest is the untrusted side, and a read-only
//! flag it applies itself only binds the guest.
//!
//! What cannot cross a VM boundary is refused before anything is mounted: a missing source,
//! and device nodes, sockets and FIFOs (virtio-fs shares files and directories only; a
//! guest opening a device node would reach the guest's device, not the host's). A bind onto
//! `/dev/shm` (how CRI runtimes give a pod's containers their shared memory directory) is
//! left out of the guest spec, so the container gets the guest's own tmpfs there: shared
//! memory between guest processes lives in guest RAM, and host files over virtio-fs would
//! neither be shared with the host's processes nor be as fast.
//!
//! Cleanup unmounts before it removes anything, and only removes the empty directories and
//! empty files that served as mount points: a volume that could not be unmounted is left
//! where it is, never deleted through.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

/// Errors sharing a container's volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The mount cannot be shared with the VM.
    #[error("mounts[{index}] ({destination}): {reason}")]
    Refused {
        /// The mount's index in the spec.
        index: usize,
        /// Its destination in the container.
        destination: String,
        /// Why.
        reason: String,
    },
    /// A host operation failed.
    #[error("mounts[{index}] ({destination}): {op} {}", path.display())]
    Io {
        /// The mount's index in the spec.
        index: usize,
        /// Its destination in the container.
        destination: String,
        /// What runv was doing.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// Whether the spec itself is at fault (rather than the host).
    pub fn is_invalid_argument(&self) -> bool {
        match self {
            VolumeError::Refused { .. } => true,
            VolumeError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ENOTDIR)
            }
        }
    }
}

/// What becomes of one mount of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Not a bind mount of a host path: the guest makes it as it is.
    Keep,
    /// The pod's `/dev/shm` bind: left out, the guest's tmpfs takes its place.
    GuestShm,
    /// A host path bind-mounted into the shared directory.
    Share(Volume),
}

/// A host path to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The mount's index in the spec.
    pub index: usize,
    /// The host path.
    pub source: PathBuf,
    /// A directory (otherwise a regular file).
    pub is_dir: bool,
    /// `rbind`: the mounts below the source come along.
    pub recursive: bool,
    /// `ro`: read-only on the host.
    pub readonly: bool,
    /// The propagation the options ask for, if any of slave or shared.
    pub propagation: Propagation,
}

/// Propagation of a volume's mounts from the host source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Nothing from the host after the mount (the default, as runc's `rprivate`).
    Private,
    /// Mounts made later under the source on the host show up (`slave`, `rslave`).
    Slave,
    /// Both ways (`shared`, `rshared`).
    Shared,
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn same_path(a: &Path, b: &str) -> bool {
    fn norm(p: &Path) -> Vec<Component<'_>> {
        p.components().filter(|c| *c != Component::CurDir).collect()
    }
    norm(a) == norm(Path::new(b))
}

/// What to do with each of a spec's mounts, checked against the host: a bind whose source
/// cannot be shared fails, naming the mount.
pub fn plan(spec: &Spec) -> Result<Vec<Action>, VolumeError> {
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    mounts
        .iter()
        .enumerate()
        .map(|(index, m)| plan_one(index, m))
        .collect()
}

/// Checks a spec's volumes on the host, so that a bad one fails before a VM starts.
pub fn validate(spec: &Spec) -> Result<(), VolumeError> {
    plan(spec).map(|_| ())
}

fn plan_one(index: usize, m: &Mount) -> Result<Action, VolumeError> {
    if !is_bind(m) {
        return Ok(Action::Keep);
    }
    let destination = m.destination().display().to_string();
    if same_path(m.destination(), "/dev/shm") {
        return Ok(Action::GuestShm);
    }
    let refused = |reason: String| VolumeError::Refused {
        index,
        destination: destination.clone(),
        reason,
    };
    let source = m
        .source()
        .clone()
        .filter(|s| !s.as_os_str().is_empty())
        .ok_or_else(|| refused("a bind mount needs a source".to_string()))?;
    if !source.is_absolute() {
        return Err(refused(format!(
            "source {} must be an absolute host path",
            source.display()
        )));
    }
    let meta = match std::fs::metadata(&source) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(format!(
                "source {} does not exist",
                source.display()
            )))
        }
        Err(e) => {
            return Err(VolumeError::Io {
                index,
                destination,
                op: "Stat source",
                path: source,
                source: e,
            })
        }
    };
    let kind = meta.file_type();
    let unshareable = if kind.is_block_device() || kind.is_char_device() {
        Some("a device node")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if !kind.is_dir() && !kind.is_file() {
        Some("neither a directory nor a regular file")
    } else {
        None
    };
    if let Some(what) = unshareable {
        return Err(refused(format!(
            "source {} is {what}, which cannot be shared with the VM (virtio-fs shares \
             directories and regular files only)",
            source.display()
        )));
    }
    let options = m.options().as_deref().unwrap_or_default();
    let mut readonly = false;
    let mut recursive = false;
    let mut propagation = Propagation::Private;
    for option in options {
        match option.as_str() {
            "ro" => readonly = true,
            "rw" => readonly = false,
            "rbind" => recursive = true,
            "slave" | "rslave" => propagation = Propagation::Slave,
            "shared" | "rshared" => propagation = Propagation::Shared,
            "private" | "rprivate" => propagation = Propagation::Private,
            _ => {}
        }
    }
    Ok(Action::Share(Volume {
        index,
        source,
        is_dir: kind.is_dir(),
        recursive,
        readonly,
        propagation,
    }))
}

// The mount API constants and structure of <linux/mount.h>, kernel ABI.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
// MS_PRIVATE and MS_SLAVE, as mount_attr's 64-bit propagation field takes them.
const PROPAGATION_PRIVATE: u64 = 1 << 18;
const PROPAGATION_SLAVE: u64 = 1 << 19;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A detached copy of the mount(s) at `source` (`open_tree(OPEN_TREE_CLONE)`).
fn clone_tree(source: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let path = cstring(source)?;
    let mut flags = OPEN_TREE_CLONE | u32::try_from(libc::O_CLOEXEC).unwrap_or_default();
    if recursive {
        flags |= u32::try_from(libc::AT_RECURSIVE).unwrap_or_default();
    }
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; the kernel
    // returns a new file descriptor or -1.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by open_tree and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets read-only and the propagation on a detached tree, recursively for `rbind`.
fn set_attributes(tree: &OwnedFd, volume: &Volume) -> std::io::Result<()> {
    let propagation = match volume.propagation {
        Propagation::Private => PROPAGATION_PRIVATE,
        Propagation::Slave => PROPAGATION_SLAVE,
        // The copy joined the source's peer group already.
        Propagation::Shared => 0,
    };
    let attr = MountAttr {
        attr_set: if volume.readonly {
            MOUNT_ATTR_RDONLY
        } else {
            0
        },
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    if attr.attr_set == 0 && attr.propagation == 0 {
        return Ok(());
    }
    let mut flags = libc::AT_EMPTY_PATH;
    if volume.recursive {
        flags |= libc::AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: the fd is open, `empty` is a NUL-terminated string, and `attr` is a
    // mount_attr of the size passed, all valid for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(|_| ())
}

/// Attaches a detached tree onto the mount point open at `target` (an `O_PATH` fd).
fn attach(tree: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    let empty = c"";
    // SAFETY: both fds are open and `empty` is a NUL-terminated string valid for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

/// The id of the mount that `fd` (or `name` under it) is on.
fn mount_id_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> std::io::Result<u64> {
    // SAFETY: an all-zero statx is a valid value for the kernel to fill in.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `stx` is writable; both outlive the call.
    let ret = unsafe {
        libc::statx(
            dir,
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(stx.stx_mnt_id)
}

/// The id of the mount a path is on, without following a final symlink: it tells a mount
/// point (even a bind mount of the same filesystem) from a plain directory.
pub fn mount_id(path: &Path) -> std::io::Result<u64> {
    mount_id_at(libc::AT_FDCWD, &cstring(path)?, 0)
}

fn open_at(dir: RawFd, name: &str, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and valid for the call; openat returns a new fd or -1.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: RawFd, name: &str) -> std::io::Result<OwnedFd> {
    open_at(dir, name, libc::O_DIRECTORY | libc::O_RDONLY)
}

fn mkdir_at(dir: RawFd, name: &str) -> std::io::Result<()> {
    let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and valid for the call.
    if unsafe { libc::mkdirat(dir, c.as_ptr(), 0o755) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `<shared>/<container>/volumes`, opened without following a symlink at any step (the
/// guest can write in the shared directory), and created if `create`.
fn open_volumes_dir(shared: &Path, container: &str, create: bool) -> std::io::Result<OwnedFd> {
    let shared_fd = open_at(
        libc::AT_FDCWD,
        &shared.to_string_lossy(),
        libc::O_DIRECTORY | libc::O_RDONLY,
    )?;
    if create {
        match mkdir_at(shared_fd.as_raw_fd(), container) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let container_fd = open_dir_at(shared_fd.as_raw_fd(), container)?;
    if create {
        match mkdir_at(container_fd.as_raw_fd(), "volumes") {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    open_dir_at(container_fd.as_raw_fd(), "volumes")
}

/// One volume mounted in the shared directory.
#[derive(Debug)]
struct Mounted {
    index: usize,
    destination: String,
    is_dir: bool,
    /// The id of the volume's mount, to unmount that mount and nothing else.
    mount_id: Option<u64>,
}

/// A container's volumes mounted in the shared directory; unmounted on
/// [`Self::release`] or drop.
#[derive(Debug)]
pub struct Volumes {
    shared: PathBuf,
    container: String,
    mounted: Vec<Mounted>,
    /// Placeholders made (mounted or not), to remove.
    made_dir: bool,
}

impl Volumes {
    /// Nothing mounted, for a container without volumes.
    pub fn none(shared: &Path, container: &str) -> Self {
        Self {
            shared: shared.to_path_buf(),
            container: container.to_string(),
            mounted: Vec::new(),
            made_dir: false,
        }
    }

    /// Mounts the volumes of `spec` for `container` under `shared` and returns the spec the
    /// guest runs: host sources replaced by their guest paths under `guest_shared`, the
    /// `/dev/shm` bind left out. On failure, what was mounted is unmounted again.
    pub fn share(
        spec: &Spec,
        shared: &Path,
        container: &str,
        guest_shared: &str,
    ) -> Result<(Self, Spec), VolumeError> {
        let actions = plan(spec)?;
        let mut volumes = Self::none(shared, container);
        let mounts = spec.mounts().clone().unwrap_or_default();
        let mut guest_mounts = Vec::with_capacity(mounts.len());
        for (m, action) in mounts.into_iter().zip(actions) {
            match action {
                Action::Keep => guest_mounts.push(m),
                Action::GuestShm => {
                    tracing::debug!(container, source = ?m.source(),
                        "/dev/shm is the guest's own tmpfs");
                }
                Action::Share(volume) => {
                    // On failure, `volumes` drops and unmounts what it has.
                    volumes.mount(&volume, &m)?;
                    let mut guest = m;
                    guest.set_source(Some(PathBuf::from(format!(
                        "{guest_shared}/{container}/volumes/{}",
                        volume.index
                    ))));
                    guest_mounts.push(guest);
                }
            }
        }
        let mut guest = spec.clone();
        if guest.mounts().is_some() {
            guest.set_mounts(Some(guest_mounts));
        }
        Ok((volumes, guest))
    }

    fn mount(&mut self, volume: &Volume, m: &Mount) -> Result<(), VolumeError> {
        let destination = m.destination().display().to_string();
        let name = volume.index.to_string();
        let target = self
            .shared
            .join(&self.container)
            .join("volumes")
            .join(&name);
        let err = |op: &'static str, path: &Path| {
            let (destination, path) = (destination.clone(), path.to_path_buf());
            move |source: std::io::Error| VolumeError::Io {
                index: volume.index,
                destination,
                op,
                path,
                source,
            }
        };
        let dir = open_volumes_dir(&self.shared, &self.container, true)
            .map_err(err("Create the volume directory", &target))?;
        self.made_dir = true;
        let tree = clone_tree(&volume.source, volume.recursive)
            .map_err(err("Clone the mount of", &volume.source))?;
        set_attributes(&tree, volume).map_err(err("Set attributes of", &volume.source))?;
        // The mount point: an empty directory or file of the source's kind, new (a name the
        // guest made up front is refused, not used).
        if volume.is_dir {
            mkdir_at(dir.as_raw_fd(), &name).map_err(err("Create", &target))?;
        } else {
            open_at(
                dir.as_raw_fd(),
                &name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            )
            .map_err(err("Create", &target))?;
        }
        self.mounted.push(Mounted {
            index: volume.index,
            destination: destination.clone(),
            is_dir: volume.is_dir,
            mount_id: None,
        });
        let point = open_at(dir.as_raw_fd(), &name, libc::O_PATH).map_err(err("Open", &target))?;
        attach(&tree, &point).map_err(err("Mount the volume at", &target))?;
        let id = cstring(Path::new(&name))
            .and_then(|c| mount_id_at(dir.as_raw_fd(), &c, 0))
            .map_err(err("Stat", &target))?;
        if let Some(last) = self.mounted.last_mut() {
            last.mount_id = Some(id);
        }
        tracing::debug!(container = %self.container, source = %volume.source.display(),
            destination = %destination, readonly = volume.readonly, "volume shared");
        Ok(())
    }

    /// Unmounts every volume (detaching a busy one) and removes the mount points, which are
    /// empty once unmounted. A volume that fails to unmount stays, and so does its mount
    /// point: nothing is ever removed through a mount.
    pub fn release(&mut self) -> Result<(), VolumeError> {
        if self.mounted.is_empty() && !self.made_dir {
            return Ok(());
        }
        let base = self.shared.join(&self.container).join("volumes");
        let dir = match open_volumes_dir(&self.shared, &self.container, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.mounted.clear();
                self.made_dir = false;
                return Ok(());
            }
            Err(source) => {
                let first = self.mounted.first();
                return Err(VolumeError::Io {
                    index: first.map(|m| m.index).unwrap_or_default(),
                    destination: first.map(|m| m.destination.clone()).unwrap_or_default(),
                    op: "Open",
                    path: base,
                    source,
                });
            }
        };
        let mut first_error = None;
        while let Some(volume) = self.mounted.pop() {
            if let Err(e) = release_one(&dir, &base, &volume) {
                tracing::warn!(container = %self.container, error = %chain(&e),
                    "volume cleanup");
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_none() {
            self.made_dir = false;
            // Empty by now unless something is left mounted; rmdir never removes contents.
            let container_dir = self.shared.join(&self.container);
            if let Ok(cfd) = open_dir_at(libc::AT_FDCWD, &container_dir.to_string_lossy()) {
                let c = c"volumes";
                // SAFETY: `c` is NUL-terminated; unlinkat with AT_REMOVEDIR only removes an
                // empty directory.
                unsafe { libc::unlinkat(cfd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn release_one(dir: &OwnedFd, base: &Path, volume: &Mounted) -> Result<(), VolumeError> {
    let name = volume.index.to_string();
    let path = base.join(&name);
    let err = |op: &'static str| {
        let (destination, path) = (volume.destination.clone(), path.clone());
        move |source: std::io::Error| VolumeError::Io {
            index: volume.index,
            destination,
            op,
            path,
            source,
        }
    };
    let cname = cstring(Path::new(&name)).map_err(err("Open"))?;
    let dir_mount = mount_id_at(dir.as_raw_fd(), c".", 0).map_err(err("Stat"))?;
    if let Some(id) = volume.mount_id {
        // Detach the volume's mount (and whatever is stacked on it), found by id through a
        // descriptor opened without following symlinks.
        loop {
            let point = match open_at(dir.as_raw_fd(), &name, libc::O_PATH) {
                Ok(point) => point,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(err("Open")(e)),
            };
            let current =
                mount_id_at(point.as_raw_fd(), c"", libc::AT_EMPTY_PATH).map_err(err("Stat"))?;
            if current == dir_mount {
                break;
            }
            let proc_path = format!("/proc/self/fd/{}", point.as_raw_fd());
            nix::mount::umount2(proc_path.as_str(), nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| err("Unmount")(e.into()))?;
            if current == id {
                break;
            }
        }
    }
    // Only an empty mount point of the container directory's own mount is removed.
    let still_mounted = mount_id_at(dir.as_raw_fd(), &cname, 0).map_err(err("Stat"))? != dir_mount;
    if still_mounted {
        return Err(err("Refuse to remove a mount point")(
            std::io::Error::from_raw_os_error(libc::EBUSY),
        ));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(err("Stat"))?;
    let removable = if volume.is_dir {
        meta.is_dir()
    } else {
        meta.is_file() && meta.len() == 0
    };
    if !removable {
        return Err(err("Refuse to remove a mount point that is not empty")(
            std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
        ));
    }
    let flags = if meta.is_dir() { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `cname` is NUL-terminated; with AT_REMOVEDIR only an empty directory goes.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), flags) } < 0 {
        return Err(err("Remove")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// An error with its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Drop for Volumes {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %chain(&e), "volume cleanup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": mounts,
        }))
        .unwrap()
    }

    fn bind(src: &Path, dst: &str, options: &[&str]) -> serde_json::Value {
        serde_json::json!({"destination": dst, "type": "bind", "source": src, "options": options})
    }

    fn is_mount_point(path: &Path) -> bool {
        let parent = path.parent().unwrap();
        mount_id(path).unwrap() != mount_id(parent).unwrap()
    }

    fn root() -> bool {
        let root = nix::unistd::Uid::effective().is_root();
        if !root {
            eprintln!("skipped: mounting needs root");
        }
        root
    }

    #[test]
    fn plan_keeps_shares_and_drops_shm() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let spec = spec(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            bind(dir.path(), "/data", &["rbind", "ro", "rslave"]),
            {"destination": "/etc/hosts", "source": file, "options": ["bind"]},
            bind(Path::new("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/p/shm"),
                 "/dev/shm/", &["rbind", "rw"]),
        ]));
        let actions = plan(&spec).unwrap();
        assert_eq!(actions[0], Action::Keep);
        assert_eq!(
            actions[1],
            Action::Share(Volume {
                index: 1,
                source: dir.path().to_path_buf(),
                is_dir: true,
                recursive: true,
                readonly: true,
                propagation: Propagation::Slave,
            })
        );
        assert_eq!(
            actions[2],
            Action::Share(Volume {
                index: 2,
                source: file,
                is_dir: false,
                recursive: false,
                readonly: false,
                propagation: Propagation::Private,
            })
        );
        // Not even stat'ed: the shm directory of a CRI pod never crosses into the VM.
        assert_eq!(actions[3], Action::GuestShm);
    }

    #[test]
    fn plan_refuses_what_cannot_cross_the_vm_boundary_naming_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let missing = dir.path().join("missing");
        let cases: Vec<(serde_json::Value, String)> = vec![
            (
                bind(&missing, "/data", &["rbind"]),
                format!(
                    "mounts[1] (/data): source {} does not exist",
                    missing.display()
                ),
            ),
            (
                bind(Path::new("/dev/null"), "/dev/null2", &["bind"]),
                "mounts[1] (/dev/null2): source /dev/null is a device node".into(),
            ),
            (bind(&fifo, "/f", &["bind"]), "is a FIFO".into()),
            (bind(&sock, "/s", &["bind"]), "is a socket".into()),
            (
                bind(Path::new("rel/dir"), "/r", &["bind"]),
                "must be an absolute host path".into(),
            ),
            (
                serde_json::json!({"destination": "/n", "type": "bind"}),
                "needs a source".into(),
            ),
        ];
        for (mount, want) in cases {
            let spec = spec(serde_json::json!([
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                mount,
            ]));
            let err = validate(&spec).unwrap_err();
            assert!(err.to_string().contains(&want), "{err} lacks {want}");
            assert!(err.is_invalid_argument(), "{err}");
        }
    }

    #[test]
    fn share_rewrites_sources_enforces_ro_on_the_host_and_cleans_up() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("in"), "host").unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("c1/rootfs")).unwrap();
        let spec = spec(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            bind(&data, "/rw", &["rbind", "rw"]),
            bind(&data, "/ro", &["rbind", "ro"]),
            bind(&file, "/etc/hosts", &["bind", "ro"]),
            bind(Path::new("/run/x/shm"), "/dev/shm", &["rbind"]),
        ]));
        let (mut volumes, guest) = Volumes::share(&spec, &shared, "c1", "/g").unwrap();
        let guest = serde_json::to_value(&guest).unwrap();
        let sources: Vec<(&str, &str)> = guest["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["destination"].as_str().unwrap(),
                    m["source"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            sources,
            [
                ("/proc", "proc"),
                ("/rw", "/g/c1/volumes/1"),
                ("/ro", "/g/c1/volumes/2"),
                ("/etc/hosts", "/g/c1/volumes/3"),
            ]
        );
        let vols = shared.join("c1/volumes");
        assert_eq!(std::fs::read_to_string(vols.join("1/in")).unwrap(), "host");
        std::fs::write(vols.join("1/out"), "guest").unwrap();
        assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "guest");
        let err = std::fs::write(vols.join("2/denied"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let err = std::fs::OpenOptions::new()
            .append(true)
            .open(vols.join("3"))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert_eq!(
            std::fs::read_to_string(vols.join("3")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert!(is_mount_point(&vols.join("1")));

        // A removal of the sandbox directory now must not go through a volume, even one
        // of the same filesystem.
        let sandbox = crate::state::SandboxDir::new(dir.path(), "shared").unwrap();
        let err = sandbox.remove().unwrap_err();
        assert!(
            err.to_string().contains("Refuse to remove a mount point"),
            "{err}"
        );
        assert!(data.join("in").exists() && data.join("out").exists() && file.exists());

        volumes.release().unwrap();
        assert!(!vols.exists(), "the mount points go once unmounted");
        sandbox.remove().unwrap();
        assert_eq!(std::fs::read_to_string(data.join("in")).unwrap(), "host");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn failed_share_unmounts_and_keeps_the_host_files() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("precious"), "keep me").unwrap();
        let shared = dir.path().join("shared");
        // The guest can write in the shared directory: a name it made up front is refused
        // as a mount point, and that fails the second volume after the first is mounted.
        std::fs::create_dir_all(shared.join("c1/volumes/1")).unwrap();
        std::fs::write(shared.join("c1/volumes/1/planted"), "x").unwrap();
        let spec = spec(serde_json::json!([
            bind(&data, "/a", &["rbind"]),
            bind(&data, "/b", &["rbind"]),
        ]));
        let err = Volumes::share(&spec, &shared, "c1", "/g").unwrap_err();
        assert!(
            err.to_string().starts_with("mounts[1] (/b): Create"),
            "{err}"
        );
        assert!(
            !shared.join("c1/volumes/0").exists(),
            "the first volume is gone"
        );
        // The whole sandbox directory goes without touching the host source.
        crate::state::SandboxDir::new(dir.path(), "shared")
            .unwrap()
            .remove()
            .unwrap();
        assert!(!shared.exists());
        assert_eq!(
            std::fs::read_to_string(data.join("precious")).unwrap(),
            "keep me"
        );
    }
}
