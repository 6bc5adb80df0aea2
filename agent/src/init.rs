//! System setup when the agent is the guest's PID 1.
//!
//! `early` runs before the agent listens (just what logging and the listener need); `late`
//! runs right after the listener is bound. Failures are logged, never fatal: PID 1 must not
//! exit.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::dup2;

mod shutdown_signal;

/// Controllers the agent enables for container cgroups, when the kernel has them.
const CONTROLLERS: [&str; 6] = ["cpu", "memory", "pids", "io", "cpuset", "hugetlb"];

struct SystemMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const EARLY_MOUNTS: [SystemMount; 3] = [
    SystemMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    SystemMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    SystemMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
];

const LATE_MOUNTS: [SystemMount; 6] = [
    SystemMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    SystemMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    SystemMount {
        source: "mqueue",
        target: "/dev/mqueue",
        fstype: "mqueue",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    SystemMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    SystemMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    SystemMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Mounts /proc, /sys and /dev, points stdio at the console and turns Ctrl-Alt-Del into a
/// graceful shutdown. Runs before logging exists, so problems go straight to stderr.
pub fn early() {
    if let Err(err) = leave_initramfs() {
        eprintln!("runv-agent: re-root off the initramfs: {err}");
    }
    for m in &EARLY_MOUNTS {
        if let Err(err) = mount_system(m) {
            eprintln!("runv-agent: mount {}: {err}", m.target);
        }
    }
    if let Err(err) = console_stdio() {
        eprintln!("runv-agent: console: {err}");
    }
    shutdown_signal::install();
}

/// Where the bind mount of the initramfs root is made before it is moved over `/`.
const REROOT_DIR: &str = "/.runv-root";

/// pivot_root(2) refuses to move away from the initramfs root (a mount without parent),
/// and containers rely on it to detach the guest's filesystem. Re-root the agent on a bind
/// mount of the initramfs, which has the initramfs as its parent: same files, but its
/// children can pivot. This is what switch_root does, without copying anything.
fn leave_initramfs() -> Result<(), Errno> {
    const RAMFS_MAGIC: i128 = 0x8584_58f6;
    const TMPFS_MAGIC: i128 = 0x0102_1994;
    let fs_type = i128::from(nix::sys::statfs::statfs("/")?.filesystem_type().0);
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Ok(());
    }
    nix::unistd::mkdir(REROOT_DIR, Mode::from_bits_truncate(0o700)).or_else(|e| match e {
        Errno::EEXIST => Ok(()),
        other => Err(other),
    })?;
    mount(
        Some("/"),
        REROOT_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    nix::unistd::chdir(REROOT_DIR)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    // The directory is empty again now that its mount moved; it is only clutter.
    let _ = fs::remove_dir(REROOT_DIR);
    Ok(())
}

/// The rest of the system: pts, shm, mqueue, cgroup2, /run, /tmp, lo, cgroup controllers.
pub fn late() {
    for m in &LATE_MOUNTS {
        if let Err(err) = mount_system(m) {
            tracing::error!(target = m.target, %err, "system mount failed");
        }
    }
    if let Err(err) = replace_with_symlink("pts/ptmx", "/dev/ptmx") {
        tracing::error!(%err, "cannot link /dev/ptmx");
    }
    tracing::debug!("system filesystems mounted");
    if let Err(err) = bring_up_loopback() {
        tracing::error!(%err, "cannot bring lo up");
    }
    enable_controllers(Path::new("/sys/fs/cgroup"));
    tracing::debug!("lo up, cgroup controllers enabled");
}

fn mount_system(m: &SystemMount) -> Result<(), Errno> {
    match fs::create_dir_all(m.target) {
        Ok(()) => {}
        Err(err) => return Err(Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))),
    }
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
        Err(Errno::EBUSY) => Ok(()),
        other => other,
    }
}

/// Makes fd 0 /dev/null and fds 1 and 2 /dev/console.
fn console_stdio() -> Result<(), Errno> {
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    dup2(null, 0)?;
    let console = open(
        "/dev/console",
        OFlag::O_WRONLY | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    dup2(console, 1)?;
    dup2(console, 2)?;
    for fd in [null, console] {
        if fd > 2 {
            let _ = nix::unistd::close(fd);
        }
    }
    Ok(())
}

fn replace_with_symlink(target: &str, link: &str) -> std::io::Result<()> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => return Ok(()),
        Ok(_) => fs::remove_file(link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, link)
}

/// Sets IFF_UP on `lo` with the classic interface ioctls (the guest has no `ip`).
fn bring_up_loopback() -> std::io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    set_up(sock.as_raw_fd())
}

fn set_up(fd: i32) -> std::io::Result<()> {
    // SAFETY: `ifreq` is plain data for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: `fd` is an open socket and `req` a valid ifreq that outlives the call.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    req.ifr_ifru.ifru_flags = flags | up;
    // SAFETY: as above; SIOCSIFFLAGS reads the name and the flags.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Enables every wanted controller the root cgroup offers, one at a time so a missing
/// one does not stop the others.
pub fn enable_controllers(root: &Path) {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let control = root.join("cgroup.subtree_control");
    for name in available
        .split_whitespace()
        .filter(|c| CONTROLLERS.contains(c))
    {
        if let Err(err) = fs::write(&control, format!("+{name}")) {
            tracing::warn!(controller = name, %err, "cannot enable cgroup controller");
        }
    }
}
