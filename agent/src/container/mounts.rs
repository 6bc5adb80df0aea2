//! The container's filesystem view, prepared by its init process in its own mount
//! namespace: the rootfs, the default and spec mounts, pivot_root, masked and read-only
//! paths.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, MountBuilder};

use super::spec::same_destination;
use super::sync::InitFailure;

/// Mount options split into flags, propagation changes and filesystem data.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Flags that a bind mount only gets through a remount.
    fn bind_remount_flags(&self) -> MsFlags {
        self.flags
            & (MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME)
    }
}

/// Parses OCI/fstab mount options; unknown ones are passed to the filesystem as data.
pub fn parse_options<S: AsRef<str>>(options: &[S]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let opt = opt.as_ref();
        let (set, clear, propagation) = match opt {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            "" | "defaults" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        out.flags = (out.flags | set) & !clear;
        out.propagation |= propagation;
    }
    out.data = data.join(",");
    out
}

/// Joins `path` under `root` the way a process chrooted at `root` would resolve it:
/// `..` and symlinks never lead outside `root`. Missing components are kept as they are.
pub fn secure_join(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    let mut links = 0;
    while let Some(next) = pending.pop() {
        let mut components: Vec<Component<'_>> = next.components().collect();
        components.reverse();
        while let Some(comp) = components.pop() {
            match comp {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => {
                    let candidate = resolved.join(name);
                    let full = root.join(&candidate);
                    match fs::read_link(&full) {
                        Ok(target) if links < 40 => {
                            links += 1;
                            if target.is_absolute() {
                                resolved = PathBuf::new();
                            }
                            let rest: PathBuf = components.iter().rev().collect();
                            pending.push(rest);
                            pending.push(target);
                            components.clear();
                        }
                        _ => resolved = candidate,
                    }
                }
            }
        }
    }
    root.join(resolved)
}

/// The mounts every container gets unless its spec mounts something at the same place.
fn default_mounts() -> Vec<Mount> {
    let entry = |dest: &str, typ: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(typ)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .expect("static mount entries are complete")
    };
    vec![
        entry("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        entry(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        entry(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        entry(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        entry("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        entry("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ]
}

/// The defaults not overridden by the spec plus the spec's mounts, parents before children.
pub fn mount_plan(spec_mounts: &[Mount]) -> Vec<Mount> {
    let mut plan: Vec<Mount> = default_mounts()
        .into_iter()
        .filter(|d| {
            !spec_mounts
                .iter()
                .any(|m| same_destination(m.destination(), &d.destination().to_string_lossy()))
        })
        .collect();
    plan.extend(spec_mounts.iter().cloned());
    // A stable sort keeps the spec's order among mounts of the same depth.
    plan.sort_by_key(|m| m.destination().components().count());
    plan
}

fn failure(what: impl std::fmt::Display, errno: Errno) -> InitFailure {
    InitFailure::os(what, errno)
}

fn io_failure(what: impl std::fmt::Display, err: std::io::Error) -> InitFailure {
    failure(
        what,
        Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)),
    )
}

/// The propagation flags of `linux.rootfsPropagation`.
pub fn root_propagation(value: &str) -> Option<MsFlags> {
    let flags = match value {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    };
    Some(flags)
}

/// Makes every mount a slave of the agent's (events flow into the container, never out)
/// and bind-mounts the rootfs onto itself, so it can be pivoted.
pub fn prepare_root(rootfs: &Path) -> Result<(), InitFailure> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| failure("make / a slave mount", e))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| failure(format!("bind rootfs {}", rootfs.display()), e))
}

/// Mounts one entry under `rootfs`.
/// `cgroup_dir` is the container's own cgroup, bound at a cgroup mount where mounting
/// cgroup2 is refused.
pub fn mount_entry(rootfs: &Path, m: &Mount, cgroup_dir: Option<&Path>) -> Result<(), InitFailure> {
    let dest = secure_join(rootfs, m.destination());
    let name = m.destination().display();
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("none");
    let typ = if typ == "cgroup" { "cgroup2" } else { typ };
    let bind = options.is_bind() || typ == "bind";
    let source: PathBuf = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));

    if bind {
        let is_dir = fs::metadata(&source)
            .map_err(|e| io_failure(format!("mount {name}: source {}", source.display()), e))?
            .is_dir();
        create_mount_point(&dest, is_dir).map_err(|e| io_failure(format!("mount {name}"), e))?;
        let flags = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
        mount(Some(&source), &dest, None::<&str>, flags, None::<&str>)
            .map_err(|e| failure(format!("bind mount {name}"), e))?;
        let remount = options.bind_remount_flags();
        if !remount.is_empty() {
            // A remount must keep the flags the source has (in a user namespace they are
            // locked, and dropping one is refused with EPERM).
            let kept = locked_flags(&dest).map_err(|e| failure(format!("statvfs {name}"), e))?;
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount | kept,
                None::<&str>,
            )
            .map_err(|e| failure(format!("remount {name}"), e))?;
        }
    } else {
        create_mount_point(&dest, true).map_err(|e| io_failure(format!("mount {name}"), e))?;
        let data = (!options.data.is_empty()).then_some(options.data.as_str());
        match mount(Some(&source), &dest, Some(typ), options.flags, data) {
            Ok(()) => {}
            // cgroup2 also answers EBUSY in a user namespace whose cgroup namespace
            // root differs from an existing superblock's; the container's own cgroup
            // directory is what it would have shown.
            Err(Errno::EPERM | Errno::EBUSY) if typ == "cgroup2" => {
                match cgroup_dir {
                    Some(dir) => bind_with_flags(dir, &dest, &options),
                    None => bind_existing(typ, &dest, &options),
                }
                .map_err(|e| {
                    failure(
                        format!("mount {typ} on {name} (refused in the user namespace, so bound)"),
                        e,
                    )
                })?;
            }
            Err(Errno::EPERM) if BINDABLE_INSTEAD.contains(&typ) => {
                bind_existing(typ, &dest, &options).map_err(|e| {
                    failure(
                        format!("mount {typ} on {name} (refused in the user namespace, so bound)"),
                        e,
                    )
                })?;
            }
            Err(Errno::EINVAL) if typ == "devpts" && has_option(data, "gid") => {
                // gid=5 (tty) is not mapped in the user namespace: the pts then belong to
                // the group of whoever opens them.
                let data = without_option(&options.data, "gid");
                let data = (!data.is_empty()).then_some(data.as_str());
                mount(Some(&source), &dest, Some(typ), options.flags, data)
                    .map_err(|e| failure(format!("mount {typ} on {name}"), e))?;
            }
            Err(e) => return Err(failure(format!("mount {typ} on {name}"), e)),
        }
    }
    if !options.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .map_err(|e| failure(format!("set propagation of {name}"), e))?;
    }
    Ok(())
}

/// Filesystems a user namespace cannot mount unless it owns the namespace they show (the
/// network namespace for sysfs, the ipc one for mqueue); the guest's own mount of them is
/// bound instead, as other runtimes do. cgroup2 has its own arm: it binds the container's
/// cgroup directory.
const BINDABLE_INSTEAD: [&str; 2] = ["sysfs", "mqueue"];

/// Binds (recursively) the agent's mount of `fstype` on `dest` and applies the mount's
/// restricting flags (ro, nosuid, nodev, noexec) to it and everything under it.
fn bind_existing(fstype: &str, dest: &Path, options: &MountOptions) -> Result<(), Errno> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let source = mount_point_of(&mountinfo, fstype).ok_or(Errno::EPERM)?;
    bind_with_flags(&source, dest, options)
}

/// Binds `source` (recursively) on `dest` with the mount's restricting flags (ro, nosuid,
/// nodev, noexec) on it and everything under it.
fn bind_with_flags(source: &Path, dest: &Path, options: &MountOptions) -> Result<(), Errno> {
    mount(
        Some(source),
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    let mut attr_set = 0;
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
    ] {
        if options.flags.contains(flag) {
            attr_set |= attr;
        }
    }
    if attr_set == 0 {
        return Ok(());
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let path =
        std::ffi::CString::new(dest.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: mount_setattr reads `attr` (of the size given) and the NUL-terminated path,
    // both alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// The first mount point of a filesystem of type `fstype` in `mountinfo`.
fn mount_point_of(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != fstype {
            return None;
        }
        Some(PathBuf::from(unescape_mountinfo(fields.split(' ').nth(4)?)))
    })
}

/// The flags of the mount at `path` that a bind remount must keep.
fn locked_flags(path: &Path) -> Result<MsFlags, Errno> {
    use nix::sys::statvfs::FsFlags;
    let current = nix::sys::statvfs::statvfs(path)?.flags();
    let mut flags = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

fn has_option(data: Option<&str>, name: &str) -> bool {
    data.is_some_and(|d| d.split(',').any(|o| o.split('=').next() == Some(name)))
}

fn without_option(data: &str, name: &str) -> String {
    data.split(',')
        .filter(|o| o.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join(",")
}

fn create_mount_point(dest: &Path, dir: bool) -> std::io::Result<()> {
    if dir {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dest)
    } else {
        if let Some(parent) = dest.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        match fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dest)
        {
            Ok(_) => Ok(()),
            // An existing mount point that is not writable (a read-only file) is fine.
            Err(_) if dest.exists() => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Makes `rootfs` the root and detaches the old one. Returns false when pivot_root was
/// refused and the weaker move-and-chroot was used instead.
pub fn pivot_root(rootfs: &Path) -> Result<bool, InitFailure> {
    nix::unistd::chdir(rootfs).map_err(|e| failure("chdir to rootfs", e))?;
    // With the same directory for both, the old root ends up stacked under the new one
    // and can be detached from "." without needing a directory in the image.
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(|e| failure("detach old root", e))?;
            nix::unistd::chdir("/").map_err(|e| failure("chdir /", e))?;
            Ok(true)
        }
        // The root is the initramfs itself, which cannot be pivoted away from.
        Err(Errno::EINVAL) => move_root(rootfs).map(|()| false),
        Err(err) => Err(failure("pivot_root", err)),
    }
}

/// The fallback for a root that cannot be pivoted: detach what the container has no
/// business seeing, move the rootfs mount over / and chroot into it.
fn move_root(rootfs: &Path) -> Result<(), InitFailure> {
    let rootfs = fs::canonicalize(rootfs).unwrap_or_else(|_| rootfs.to_path_buf());
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|e| io_failure("read mountinfo", e))?;
    for point in unrelated_mounts(&mountinfo, &rootfs) {
        if let Err(err) = umount2(&point, MntFlags::MNT_DETACH) {
            return Err(failure(format!("detach {}", point.display()), err));
        }
    }
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| failure("move rootfs to /", e))?;
    nix::unistd::chroot(".").map_err(|e| failure("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| failure("chdir /", e))
}

/// Mount points of `mountinfo` that neither lead to `rootfs` nor lie inside it, deepest
/// first.
fn unrelated_mounts(mountinfo: &str, rootfs: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| !rootfs.starts_with(p) && !p.starts_with(rootfs))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Gives the container's root the propagation of `linux.rootfsPropagation` (after the
/// pivot, so it applies to the new root and never to the agent's mounts).
pub fn set_root_propagation(value: &str) -> Result<(), InitFailure> {
    let flags = root_propagation(value).ok_or_else(|| {
        InitFailure::new(
            super::sync::FailureKind::InvalidArgument,
            format!("linux.rootfsPropagation: {value:?} is not a propagation type"),
        )
    })?;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
        .map_err(|e| failure(format!("linux.rootfsPropagation {value}"), e))
}

/// Hides `linux.maskedPaths`: /dev/null over files, an empty read-only tmpfs over dirs.
pub fn mask_paths<S: AsRef<str>>(paths: &[S]) -> Result<(), InitFailure> {
    for path in paths {
        let path = path.as_ref();
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let result = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(|e| failure(format!("mask {path}"), e))?;
    }
    Ok(())
}

/// Makes `linux.readonlyPaths` read-only.
pub fn readonly_paths<S: AsRef<str>>(paths: &[S]) -> Result<(), InitFailure> {
    for path in paths {
        let path = path.as_ref();
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| failure(format!("bind {path}"), e))?;
        remount_readonly(path)?;
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping the flags it has.
pub fn remount_readonly(path: &str) -> Result<(), InitFailure> {
    let current =
        nix::sys::statvfs::statvfs(path).map_err(|e| failure(format!("statvfs {path}"), e))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let kept = current.flags();
    use nix::sys::statvfs::FsFlags;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if kept.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(|e| failure(format!("remount {path} read-only"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts = parse_options(&["nosuid", "noexec", "mode=755", "size=65536k", "ro"]);
        assert_eq!(
            opts.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(opts.data, "mode=755,size=65536k");
        assert!(opts.propagation.is_empty());
    }

    #[test]
    fn later_options_win() {
        let opts = parse_options(&["ro", "rw", "nodev", "dev"]);
        assert!(opts.flags.is_empty());
    }

    #[test]
    fn bind_and_propagation() {
        let opts = parse_options(&["rbind", "ro", "rprivate"]);
        assert!(opts.is_bind());
        assert!(opts.flags.contains(MsFlags::MS_REC));
        assert_eq!(opts.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(opts.bind_remount_flags(), MsFlags::MS_RDONLY);
    }

    #[test]
    fn spec_mounts_override_defaults() {
        let spec: Vec<Mount> = serde_json::from_str(
            r#"[{"destination": "/dev/", "type": "bind", "source": "/x", "options": ["rbind"]},
                {"destination": "/data", "type": "tmpfs", "source": "tmpfs"}]"#,
        )
        .unwrap();
        let plan = mount_plan(&spec);
        let dests: Vec<String> = plan
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/sys",
                "/dev/",
                "/data",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue"
            ]
        );
        assert_eq!(plan[2].typ().as_deref(), Some("bind"));
    }

    #[test]
    fn unrelated_mounts_spare_the_rootfs_and_its_parents() {
        let mountinfo = "\
1 0 0:2 / / rw - rootfs rootfs rw
2 1 0:3 / /proc rw - proc proc rw
3 1 0:4 / /dev rw - devtmpfs dev rw
4 3 0:5 / /dev/pts rw - devpts devpts rw
5 1 0:6 / /run/shared rw - virtiofs shared rw
6 5 0:6 /c1/rootfs /run/shared/c1/rootfs rw - virtiofs shared rw
7 6 0:7 / /run/shared/c1/rootfs/proc rw - proc proc rw
8 1 0:8 / /my\\040dir rw - tmpfs tmpfs rw
";
        let points = unrelated_mounts(mountinfo, Path::new("/run/shared/c1/rootfs"));
        let names: Vec<String> = points.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["/dev/pts", "/proc", "/dev", "/my dir"]);
    }

    #[test]
    fn existing_mounts_are_found_by_type() {
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
30 1 0:25 / /dev/m\\040q rw,nosuid - mqueue mqueue rw
";
        assert_eq!(
            mount_point_of(mountinfo, "sysfs"),
            Some(PathBuf::from("/sys"))
        );
        assert_eq!(
            mount_point_of(mountinfo, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            mount_point_of(mountinfo, "mqueue"),
            Some(PathBuf::from("/dev/m q"))
        );
        assert_eq!(mount_point_of(mountinfo, "proc"), None);
    }

    #[test]
    fn devpts_gid_option_can_be_dropped() {
        let data = "newinstance,ptmxmode=0666,mode=0620,gid=5";
        assert!(has_option(Some(data), "gid"));
        assert!(!has_option(Some(data), "uid"));
        assert!(!has_option(None, "gid"));
        assert_eq!(
            without_option(data, "gid"),
            "newinstance,ptmxmode=0666,mode=0620"
        );
    }

    #[test]
    fn secure_join_stays_inside_root() {
        let dir = std::env::temp_dir().join(format!("runv-sj-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", dir.join("up")).unwrap();
        std::os::unix::fs::symlink("etc", dir.join("rel")).unwrap();
        assert_eq!(secure_join(&dir, Path::new("/abs/x")), dir.join("etc/x"));
        assert_eq!(secure_join(&dir, Path::new("/up/tmp")), dir.join("tmp"));
        assert_eq!(secure_join(&dir, Path::new("/../../x")), dir.join("x"));
        assert_eq!(secure_join(&dir, Path::new("/rel/y")), dir.join("etc/y"));
        assert_eq!(
            secure_join(&dir, Path::new("/new/dir")),
            dir.join("new/dir")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
