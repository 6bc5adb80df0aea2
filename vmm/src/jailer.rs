//! `runv-vmm jail`: starts runv-vmm confined (see docs/vmm-jailer.md).
//!
//! ```text
//! runv-vmm jail --id ID --uid UID --gid GID [--chroot-base DIR] [--netns PATH]
//!               [--cgroup DIR]... -- <runv-vmm args>
//! ```
//! Input files (`--kernel`, `--initrd`, `--disk`) are bind-mounted into the jail root; output
//! paths (`--vsock-uds`, `--api-socket`, `--fs-socket`, `--serial unix:P` / file) are reduced to
//! their file names inside the jail root, i.e. `<chroot-base>/runv-vmm/<id>/root/<name>` on
//! the host.
//!
//! The process that was started stays outside the jail: it joins the `--cgroup` directories
//! (so everything it starts is accounted there), forks the process that builds the jail and
//! starts runv-vmm, waits for it, removes `<chroot-base>/runv-vmm/<id>` and exits with
//! runv-vmm's status.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Default parent of the jail directories.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/runv-jail";

/// Errors of the jailer.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Bad jailer arguments.
    #[error("{0}")]
    Usage(String),
    /// A system call failed during setup.
    #[error("Jail setup failed: {0}")]
    Setup(String, #[source] std::io::Error),
    /// The jail setup in the child process failed (its message, causes included).
    #[error("{0}")]
    Child(String),
}

/// A file to bind-mount into the jail root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub host: PathBuf,
    /// Name inside the jail root.
    pub name: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parsed jailer arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// Sandbox id (names the jail directory).
    pub id: String,
    /// uid runv-vmm runs as.
    pub uid: u32,
    /// gid runv-vmm runs as.
    pub gid: u32,
    /// Parent of the jail directories.
    pub chroot_base: PathBuf,
    /// Network namespace to join.
    pub netns: Option<PathBuf>,
    /// Cgroup directories (v2, or one per v1 hierarchy) to join before anything starts.
    pub cgroups: Vec<PathBuf>,
    /// runv-vmm arguments, as given.
    pub vmm_args: Vec<String>,
}

fn usage(msg: impl Into<String>) -> JailError {
    JailError::Usage(msg.into())
}

/// Parses the arguments after `jail`.
pub fn parse_jail_args(args: &[String]) -> Result<JailConfig, JailError> {
    let mut id = None;
    let mut uid = None;
    let mut gid = None;
    let mut base = PathBuf::from(DEFAULT_CHROOT_BASE);
    let mut netns = None;
    let mut cgroups = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--id" => id = Some(val()?),
            "--uid" => uid = Some(val()?.parse().map_err(|_| usage("--uid: not a number"))?),
            "--gid" => gid = Some(val()?.parse().map_err(|_| usage("--gid: not a number"))?),
            "--chroot-base" => base = PathBuf::from(val()?),
            "--netns" => netns = Some(PathBuf::from(val()?)),
            "--cgroup" => cgroups.push(PathBuf::from(val()?)),
            other => return Err(usage(format!("Unknown jail argument {other:?}"))),
        }
    }
    let vmm_args: Vec<String> = it.cloned().collect();
    let id: String = id.ok_or_else(|| usage("--id is required"))?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(usage(format!(
            "Invalid jail id {id:?}: use [A-Za-z0-9-]{{1,64}}"
        )));
    }
    let uid: u32 = uid.ok_or_else(|| usage("--uid is required"))?;
    let gid: u32 = gid.ok_or_else(|| usage("--gid is required"))?;
    if uid == 0 || gid == 0 {
        return Err(usage("The jail uid and gid must not be 0"));
    }
    if vmm_args.is_empty() {
        return Err(usage("runv-vmm arguments must follow --"));
    }
    Ok(JailConfig {
        id,
        uid,
        gid,
        chroot_base: base,
        netns,
        cgroups,
        vmm_args,
    })
}

fn file_name(p: &str) -> Result<String, JailError> {
    Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| usage(format!("Path {p:?} has no file name")))
}

/// Rewrites runv-vmm arguments for use inside the jail; returns them and the bind mounts.
pub fn rewrite_args(args: &[String]) -> Result<(Vec<String>, Vec<BindMount>), JailError> {
    let mut out = Vec::with_capacity(args.len());
    let mut mounts = Vec::new();
    let mut disks = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--config" => return Err(usage("--config is not supported under the jailer")),
            "--kernel" | "--initrd" => {
                let name = a.trim_start_matches("--").to_string();
                mounts.push(BindMount {
                    host: PathBuf::from(val()?),
                    name: name.clone(),
                    read_only: true,
                });
                out.extend([a.clone(), format!("/{name}")]);
            }
            "--disk" => {
                let mut disk = crate::config::BlockConfig::parse(&val()?);
                let name = format!("disk{disks}.img");
                disks += 1;
                mounts.push(BindMount {
                    host: std::mem::replace(&mut disk.path, PathBuf::from(format!("/{name}"))),
                    name,
                    read_only: disk.read_only,
                });
                out.extend([a.clone(), disk.to_arg()]);
            }
            "--vsock-uds" | "--api-socket" | "--fs-socket" => {
                let v = val()?;
                out.extend([a.clone(), format!("/{}", file_name(&v)?)]);
            }
            "--serial" => {
                let v = val()?;
                let inner = match v.as_str() {
                    "stdio" | "none" => v.clone(),
                    _ => match v.strip_prefix("unix:") {
                        Some(p) => format!("unix:/{}", file_name(p)?),
                        None => format!("/{}", file_name(&v)?),
                    },
                };
                out.extend([a.clone(), inner]);
            }
            _ => out.push(a.clone()),
        }
    }
    Ok((out, mounts))
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| usage(format!("Path {} contains a NUL byte", p.display())))
}

fn check(what: impl Into<String>, ret: libc::c_int) -> Result<(), JailError> {
    if ret < 0 {
        Err(JailError::Setup(
            what.into(),
            std::io::Error::last_os_error(),
        ))
    } else {
        Ok(())
    }
}

fn mount(src: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    let src_c = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call, or null.
    let ret = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(format!("mount {}", target.display()), ret)
}

fn mknod(path: &Path, major: u32, minor: u32, uid: u32, gid: u32) -> Result<(), JailError> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid path string; mknod and chown take plain integers otherwise.
    let ret = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    check(format!("mknod {}", path.display()), ret)?;
    // SAFETY: as above.
    check(format!("chown {}", path.display()), unsafe {
        libc::chown(c.as_ptr(), uid, gid)
    })
}

/// Whether the ELF file at `path` needs a dynamic loader (has a PT_INTERP header).
fn is_dynamic(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return true;
    };
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8).map(|x| {
            let mut a = [0u8; 8];
            a.copy_from_slice(x);
            u64::from_le_bytes(a)
        })
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return true;
    };
    (0..usize::from(phnum)).any(|i| {
        let o = phoff + i * usize::from(phentsize);
        b.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A dynamically linked runv-vmm needs the loader and libc: the host library directories
/// are bind-mounted read-only (symlinks such as merged-/usr `/lib -> usr/lib` are recreated).
/// A static (musl) build needs none of this.
fn share_libraries(root: &Path) -> Result<(), JailError> {
    for dir in ["/usr/lib", "/usr/lib64", "/lib", "/lib64"] {
        let host = Path::new(dir);
        let target = root.join(dir.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(host) else {
            continue;
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| JailError::Setup(format!("create {}", parent.display()), e))?;
        }
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(host)
                .map_err(|e| JailError::Setup(format!("read link {dir}"), e))?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)
                .map_err(|e| JailError::Setup(format!("recreate link {dir}"), e))?;
        } else if meta.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(|e| JailError::Setup(format!("create {}", target.display()), e))?;
            mount(Some(host), &target, libc::MS_BIND | libc::MS_REC)?;
            mount(
                None,
                &target,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            )?;
        }
    }
    Ok(())
}

const CGROUP_SUPER_MAGIC: i128 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i128 = 0x6367_7270;

/// Moves this process into the cgroup directory `dir` (cgroup v2, or a v1 hierarchy): its
/// pid goes into `cgroup.procs`. The directory must exist on a cgroup file system; creating
/// it (with its limits) and removing it afterwards is the caller's business.
pub fn join_cgroup(dir: &Path) -> Result<(), JailError> {
    let c = cstr(dir)?;
    // SAFETY: an all-zero statfs is a valid value to be filled in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path string and `st` a valid out pointer.
    check(format!("statfs {}", dir.display()), unsafe {
        libc::statfs(c.as_ptr(), &mut st)
    })?;
    // i64 with glibc, u64 with musl.
    let magic = i128::from(st.f_type);
    if magic != CGROUP_SUPER_MAGIC && magic != CGROUP2_SUPER_MAGIC {
        return Err(usage(format!(
            "--cgroup {}: not a cgroup directory",
            dir.display()
        )));
    }
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| JailError::Setup(format!("join the cgroup {}", dir.display()), e))
}

/// Whether a mount point of this mount namespace lies at or under `dir`.
fn has_mounts_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(mp).starts_with(dir))
}

/// Removes the jail directory after runv-vmm ended. Its bind mounts lived in the jail's own
/// mount namespace, gone with it; should a mount still be visible under the directory here,
/// nothing is removed.
fn remove_jail_dir(dir: &Path) {
    if has_mounts_under(dir) {
        crate::log_line!("jail: {} still has mounts; not removed", dir.display());
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            crate::log_line!("jail: cannot remove {}: {e}", dir.display());
        }
    }
}

/// Starts runv-vmm in its jail (this process must be root), waits for it, removes the jail
/// directory and returns runv-vmm's exit status.
///
/// This process joins the cgroups and stays outside the jail; a child builds the jail in new
/// mount and PID namespaces and starts runv-vmm there. A setup error in the child is passed
/// back through a pipe and returned here.
pub fn run_jail(cfg: &JailConfig) -> Result<i32, JailError> {
    let (args, mounts) = rewrite_args(&cfg.vmm_args)?;
    for m in &mounts {
        if !m.host.exists() {
            return Err(usage(format!("{} does not exist", m.host.display())));
        }
    }
    for dir in &cfg.cgroups {
        join_cgroup(dir)?;
    }
    let jail_dir = cfg.chroot_base.join("runv-vmm").join(&cfg.id);
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check("pipe", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    let [read_fd, write_fd] = fds;
    // SAFETY: this process is single-threaded (the jail subcommand starts no threads), so the
    // child may go on running ordinary code.
    let pid = unsafe { libc::fork() };
    check("fork", pid)?;
    if pid == 0 {
        // SAFETY: closing our copy of the read end; dying with the parent.
        unsafe {
            libc::close(read_fd);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        let code = match confine_and_run(cfg, args, mounts) {
            Ok(code) => code,
            Err(e) => {
                let msg = error_chain(&e);
                // SAFETY: writing a valid buffer to our pipe end.
                unsafe { libc::write(write_fd, msg.as_ptr().cast(), msg.len()) };
                crate::EXIT_VMM_ERROR
            }
        };
        // SAFETY: ending the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: closing our copy of the write end, so the read below ends with the child.
    unsafe { libc::close(write_fd) };
    let mut msg = Vec::new();
    // SAFETY: the read end is ours; File takes it over and closes it.
    let mut pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(read_fd) };
    let _ = std::io::Read::read_to_end(&mut pipe, &mut msg);
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let waited = check("wait for the jail", unsafe {
        libc::waitpid(pid, &mut status, 0)
    });
    remove_jail_dir(&jail_dir);
    waited?;
    if !msg.is_empty() {
        return Err(JailError::Child(String::from_utf8_lossy(&msg).into_owned()));
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        crate::EXIT_VMM_ERROR
    })
}

/// `error: cause: cause...` on one line.
fn error_chain(e: &JailError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// In the child: builds the jail, starts runv-vmm in it and waits for it.
fn confine_and_run(
    cfg: &JailConfig,
    args: Vec<String>,
    mounts: Vec<BindMount>,
) -> Result<i32, JailError> {
    let root = cfg.chroot_base.join("runv-vmm").join(&cfg.id).join("root");
    let io = |what: &str| {
        let what = what.to_string();
        move |e| JailError::Setup(what, e)
    };
    std::fs::create_dir_all(&root).map_err(io("create the jail directory"))?;
    let root_c = cstr(&root)?;
    // SAFETY: plain syscalls on a valid path string.
    check("chown the jail root", unsafe {
        libc::chown(root_c.as_ptr(), cfg.uid, cfg.gid)
    })?;
    // SAFETY: as above.
    check("chmod the jail root", unsafe {
        libc::chmod(root_c.as_ptr(), 0o700)
    })?;

    // SAFETY: unshare only changes this process's namespaces.
    check("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    })?;
    mount(None, Path::new("/"), libc::MS_SLAVE | libc::MS_REC)?;
    mount(Some(&root), &root, libc::MS_BIND | libc::MS_REC)?;
    for m in &mounts {
        let target = root.join(&m.name);
        std::fs::write(&target, b"").map_err(io("create a bind-mount target"))?;
        mount(Some(&m.host), &target, libc::MS_BIND)?;
        if m.read_only {
            mount(
                None,
                &target,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            )?;
        }
    }
    let exe = root.join("runv-vmm");
    let _ = std::fs::remove_file(&exe);
    if std::fs::hard_link("/proc/self/exe", &exe).is_err() {
        std::fs::copy("/proc/self/exe", &exe).map_err(io("copy runv-vmm into the jail"))?;
    }
    if is_dynamic(Path::new("/proc/self/exe")) {
        share_libraries(&root)?;
    }
    let dev = root.join("dev");
    let _ = std::fs::remove_dir_all(&dev);
    std::fs::create_dir_all(dev.join("net")).map_err(io("create the jail /dev"))?;
    mknod(&dev.join("kvm"), 10, 232, cfg.uid, cfg.gid)?;
    mknod(&dev.join("net/tun"), 10, 200, cfg.uid, cfg.gid)?;
    mknod(&dev.join("null"), 1, 3, cfg.uid, cfg.gid)?;
    mknod(&dev.join("urandom"), 1, 9, cfg.uid, cfg.gid)?;

    if let Some(ns) = &cfg.netns {
        let f = std::fs::File::open(ns).map_err(io("open the network namespace"))?;
        // SAFETY: setns on an open namespace fd.
        check("setns(net)", unsafe {
            libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET)
        })?;
    }

    std::env::set_current_dir(&root).map_err(io("enter the jail root"))?;
    let dot = CString::new(".").map_err(|_| usage("internal"))?;
    // SAFETY: pivot_root(".", ".") stacks the old root on the new one; both strings are valid.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check("pivot_root", if ret < 0 { -1 } else { 0 })?;
    // SAFETY: detaching the old root stacked on ".".
    check("detach the old root", unsafe {
        libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
    })?;
    std::env::set_current_dir("/").map_err(io("chdir /"))?;

    // SAFETY: the next child of this process becomes PID 1 of a new PID namespace.
    check("unshare(CLONE_NEWPID)", unsafe {
        libc::unshare(libc::CLONE_NEWPID)
    })?;
    let argv: Vec<CString> = std::iter::once("/runv-vmm".to_string())
        .chain(args)
        .map(|a| CString::new(a).map_err(|_| usage("An argument contains a NUL byte")))
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let (uid, gid) = (cfg.uid, cfg.gid);

    // SAFETY: the child only makes raw syscalls and execs; it allocates nothing.
    let pid = unsafe { libc::fork() };
    check("fork", pid)?;
    if pid == 0 {
        // SAFETY: raw syscalls with integer arguments and the prebuilt argv; on any failure the
        // child exits with status 1 (runv-vmm's error status).
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let nofile = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &nofile);
            let core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            let fail = |msg: &[u8]| -> ! {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(1)
            };
            if libc::setgroups(0, std::ptr::null()) < 0 {
                fail(b"runv-vmm: error: jail: setgroups failed\n");
            }
            if libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                fail(b"runv-vmm: error: jail: cannot switch to the jail uid/gid\n");
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                fail(b"runv-vmm: error: jail: PR_SET_NO_NEW_PRIVS failed\n");
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::execv(argv_ptrs[0], argv_ptrs.as_ptr());
            fail(b"runv-vmm: error: jail: cannot exec /runv-vmm in the jail\n");
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    check("wait for runv-vmm", unsafe {
        libc::waitpid(pid, &mut status, 0)
    })?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        crate::EXIT_VMM_ERROR
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parse_and_validate() {
        let c = parse_jail_args(&s(&[
            "--id", "sb-1", "--uid", "1000", "--gid", "1000", "--", "--kernel", "/k",
        ]))
        .unwrap();
        assert_eq!(c.vmm_args, s(&["--kernel", "/k"]));
        assert_eq!(c.chroot_base, PathBuf::from(DEFAULT_CHROOT_BASE));
        assert!(
            parse_jail_args(&s(&["--id", "../x", "--uid", "1", "--gid", "1", "--", "a"])).is_err()
        );
        assert!(
            parse_jail_args(&s(&["--id", "x", "--uid", "0", "--gid", "1", "--", "a"])).is_err()
        );
        assert!(parse_jail_args(&s(&["--id", "x", "--uid", "5", "--gid", "5"])).is_err());
    }

    #[test]
    fn args_are_rewritten_into_the_jail() {
        let (out, mounts) = rewrite_args(&s(&[
            "--kernel",
            "/a/vmlinux",
            "--disk",
            "/b/root.img,ro",
            "--disk",
            "/c/data.img",
            "--vsock-uds",
            "/run/x/vsock.sock",
            "--serial",
            "unix:/run/x/con.sock",
            "--vcpus",
            "2",
        ]))
        .unwrap();
        assert_eq!(
            out,
            s(&[
                "--kernel",
                "/kernel",
                "--disk",
                "/disk0.img,ro",
                "--disk",
                "/disk1.img",
                "--vsock-uds",
                "/vsock.sock",
                "--serial",
                "unix:/con.sock",
                "--vcpus",
                "2",
            ])
        );
        assert_eq!(mounts.len(), 3);
        assert!(mounts[1].read_only);
        assert!(!mounts[2].read_only);
        assert!(rewrite_args(&s(&["--config", "/x.json"])).is_err());
    }
}
