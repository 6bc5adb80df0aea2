//! The container's init process, `runv-agent __container-init`, and exec processes,
//! `runv-agent __container-exec`.
//!
//! The agent clones it into new mount, pid, uts and ipc namespaces with the container's
//! stdio as fds 0-2 and the sync socket as fd 3, then places it in the container's cgroup.
//! Single-threaded and fresh from exec, it can do the setup that must not run between fork
//! and exec in the agent: mounts, pivot_root, the terminal, the user, then waits for the
//! start message and execs the container's process.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};

use super::sync::{self, FailureKind, FrameBuffer, FromInit, InitConfig, InitFailure, ToInit};
use super::{capabilities, devices, lookup, mounts, namespaces, process_attrs, seccomp, spec};

/// Terminal size (rows, cols) when the spec gives no consoleSize.
const DEFAULT_TERMINAL_SIZE: (u16, u16) = (24, 80);

/// The fd of the sync socket in the init process.
pub const SYNC_FD: RawFd = 3;

/// Runs the container's init process. Never returns.
pub fn main() -> ! {
    finish(run())
}

/// Runs an exec process: joins the container's namespaces, prepares the process and
/// execs it. Never returns.
pub fn exec_main() -> ! {
    finish(run_exec())
}

fn finish(result: Result<Infallible, InitFailure>) -> ! {
    let code = match result {
        Ok(never) => match never {},
        Err(failure) => {
            if sync::send_blocking(SYNC_FD, &FromInit::Failed(failure.clone()), None).is_err() {
                eprintln!("runv container init: {}", failure.message);
            }
            // The shell's convention for a command that is missing or cannot run.
            match failure.kind {
                FailureKind::NotFound => 127,
                _ => 126,
            }
        }
    };
    std::process::exit(code)
}

/// The sync socket (fd 3), close-on-exec from now on.
fn sync_socket() -> Result<BorrowedFd<'static>, InitFailure> {
    fcntl(SYNC_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| InitFailure::os("sync fd", e))?;
    // SAFETY: fd 3 is the sync socket the agent set up for us; nothing else in this
    // process uses it as anything else, and it stays open until exec or exit.
    Ok(unsafe { BorrowedFd::borrow_raw(SYNC_FD) })
}

fn run_exec() -> Result<Infallible, InitFailure> {
    let sock = sync_socket()?;
    let mut frames = FrameBuffer::default();
    let config = match sync::recv_blocking(&sock, &mut frames) {
        Ok(Some(ToInit::Exec(config))) => config,
        Ok(Some(_)) => return Err(InitFailure::internal("exec process got no exec config")),
        Ok(None) => std::process::exit(1),
        Err(err) => return Err(InitFailure::internal(err.to_string())),
    };
    namespaces::join_all(&config.join)?;
    initial_cpu_affinity(&config.process)?;
    nix::unistd::setsid().map_err(|e| InitFailure::os("setsid", e))?;
    if config.process.terminal().unwrap_or(false) {
        let size = config.process.console_size().as_ref().map(|s| {
            (
                u16::try_from(s.height()).unwrap_or(u16::MAX),
                u16::try_from(s.width()).unwrap_or(u16::MAX),
            )
        });
        setup_terminal(size, false)?;
    }
    let (program, args, env, filter) = prepare_process(&config.process, config.seccomp.as_ref())?;
    reset_signals();
    filter.install()?;
    let err = nix::unistd::execve(&program, &args, &env).unwrap_err();
    Err(InitFailure::os(
        format!("exec {}", program.to_string_lossy()),
        err,
    ))
}

fn run() -> Result<Infallible, InitFailure> {
    let sock = sync_socket()?;
    let mut frames = FrameBuffer::default();
    let config = match sync::recv_blocking(&sock, &mut frames) {
        Ok(Some(ToInit::Config(config))) => config,
        Ok(Some(_)) => return Err(InitFailure::internal("start before config")),
        Ok(None) => std::process::exit(1),
        Err(err) => return Err(InitFailure::internal(err.to_string())),
    };
    let mut warnings = Vec::new();
    let (program, args, env, filter) = prepare(&config, &mut warnings)?;

    sync::send_blocking(SYNC_FD, &FromInit::Ready { warnings }, None)
        .map_err(|e| InitFailure::internal(e.to_string()))?;
    match sync::recv_blocking::<ToInit>(&sock, &mut frames) {
        Ok(Some(ToInit::Start)) => {}
        // The agent dropped the container before starting it.
        _ => std::process::exit(1),
    }
    reset_signals();
    filter.install()?;
    let err = nix::unistd::execve(&program, &args, &env).unwrap_err();
    Err(InitFailure::os(
        format!("exec {}", program.to_string_lossy()),
        err,
    ))
}

/// Everything up to the exec: returns the program, argv, environment and the seccomp
/// filter still to load.
fn prepare(config: &InitConfig, warnings: &mut Vec<String>) -> Result<Prepared, InitFailure> {
    let spec = &config.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| InitFailure::new(FailureKind::InvalidArgument, "process is missing"))?;

    namespaces::join_all(&config.join)?;
    let own = CloneFlags::from_bits_truncate(config.unshare);
    if !own.is_empty() {
        unshare(own).map_err(|e| InitFailure::os("unshare namespaces in the user namespace", e))?;
    }
    initial_cpu_affinity(process)?;
    if config.new_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| InitFailure::os("cgroup namespace", e))?;
    }
    nix::unistd::setsid().map_err(|e| InitFailure::os("setsid", e))?;

    let rootfs = &config.rootfs;
    mounts::prepare_root(rootfs)?;
    let spec_mounts = spec.mounts().clone().unwrap_or_default();
    for m in mounts::mount_plan(&spec_mounts) {
        mounts::mount_entry(rootfs, &m, config.cgroup_dir.as_deref())?;
    }
    if let Some(devices) = spec.linux().as_ref().and_then(|l| l.devices().as_ref()) {
        devices::create_spec_devices(rootfs, devices)?;
    }
    devices::populate(rootfs)?;
    if !mounts::pivot_root(rootfs)? {
        warnings.push("pivot_root refused; the root was moved and chrooted into".into());
    }
    if let Some(propagation) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        mounts::set_root_propagation(propagation)?;
    }

    if spec::terminal(spec) {
        setup_terminal(spec::console_size(spec), true)?;
    }
    if let Some(linux) = spec.linux() {
        if let Some(sysctls) = linux.sysctl() {
            process_attrs::set_sysctls(sysctls)?;
        }
        mounts::mask_paths(linux.masked_paths().as_deref().unwrap_or_default())?;
        mounts::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
    }
    if config.readonly_root {
        mounts::remount_readonly("/")?;
    }
    if let Some(hostname) = spec.hostname() {
        nix::unistd::sethostname(hostname)
            .map_err(|e| InitFailure::os(format!("sethostname {hostname:?}"), e))?;
    }
    if let Some(domainname) = spec.domainname() {
        set_domainname(domainname)?;
    }
    if let Some(linux) = spec.linux() {
        if let Some(personality) = linux.personality() {
            process_attrs::set_personality(personality)?;
        }
        for (field, value) in [
            ("process.apparmorProfile", process.apparmor_profile()),
            ("process.selinuxLabel", process.selinux_label()),
            ("linux.mountLabel", linux.mount_label()),
        ] {
            if value.as_deref().is_some_and(|v| !v.is_empty()) {
                warnings.push(format!(
                    "{field} ignored: the guest kernel has no AppArmor or SELinux"
                ));
            }
        }
    }
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    prepare_process(process, seccomp)
}

/// The program, argv, environment and the seccomp filter still to load before execve.
type Prepared = (CString, Vec<CString>, Vec<CString>, seccomp::Pending);

/// Pins the process to `process.execCPUAffinity.initial` for its setup.
fn initial_cpu_affinity(process: &oci_spec::runtime::Process) -> Result<(), InitFailure> {
    match process
        .exec_cpu_affinity()
        .as_ref()
        .and_then(|a| a.initial().as_deref())
    {
        Some(list) => process_attrs::set_cpu_affinity(list, "process.execCPUAffinity.initial"),
        None => Ok(()),
    }
}

fn set_domainname(name: &str) -> Result<(), InitFailure> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    Errno::result(ret)
        .map(drop)
        .map_err(|e| InitFailure::os(format!("setdomainname {name:?}"), e))
}

/// The process part, shared by the init and exec processes: limits, privileges, user,
/// cwd, seccomp (the container's profile, loaded here or by the caller right before execve).
fn prepare_process(
    process: &oci_spec::runtime::Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<Prepared, InitFailure> {
    process_attrs::set_rlimits(process.rlimits().as_deref().unwrap_or_default())?;
    if let Some(score) = process.oom_score_adj() {
        process_attrs::set_oom_score_adj(score)?;
    }
    // Real-time classes need privileges the process may be about to drop.
    if let Some(sched) = process.scheduler() {
        process_attrs::set_scheduler(sched)?;
    }
    if let Some(prio) = process.io_priority() {
        process_attrs::set_io_priority(prio)?;
    }
    if let Some(list) = process
        .exec_cpu_affinity()
        .as_ref()
        .and_then(|a| a.cpu_affinity_final().as_deref())
    {
        process_attrs::set_cpu_affinity(list, "process.execCPUAffinity.final")?;
    }
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    if no_new_privs {
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers only.
        let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        Errno::result(ret).map_err(|e| InitFailure::os("no_new_privs", e))?;
    }
    // Before the capabilities go: without no_new_privs loading needs CAP_SYS_ADMIN.
    let filter = seccomp::prepare(seccomp, no_new_privs)?;
    let caps = process
        .capabilities()
        .as_ref()
        .map(capabilities::masks)
        .transpose()?;
    if let Some(caps) = &caps {
        capabilities::prepare(caps)?;
    }
    switch_user(process.user())?;
    if let Some(caps) = &caps {
        capabilities::apply(caps)?;
    }

    let cwd = process.cwd();
    nix::unistd::chdir(cwd.as_path())
        .map_err(|e| InitFailure::os(format!("cwd {}", cwd.display()), e))?;

    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let args: Vec<String> = process.args().clone().unwrap_or_default();
    let first = args
        .first()
        .ok_or_else(|| InitFailure::new(FailureKind::InvalidArgument, "process.args is empty"))?;
    let program = lookup::resolve(first, lookup::path_from_env(&env))?;
    Ok((
        c_string(program.as_os_str().as_encoded_bytes())?,
        c_strings(&args)?,
        c_strings(&env)?,
        filter,
    ))
}

fn c_string(bytes: &[u8]) -> Result<CString, InitFailure> {
    CString::new(bytes).map_err(|_| {
        InitFailure::new(
            FailureKind::InvalidArgument,
            "argument or environment contains NUL",
        )
    })
}

fn c_strings(items: &[String]) -> Result<Vec<CString>, InitFailure> {
    items.iter().map(|s| c_string(s.as_bytes())).collect()
}

/// A pty from the container's own devpts: the slave becomes fds 0-2, the controlling
/// terminal and (for the init process, `console`) /dev/console; the master goes to the
/// agent.
fn setup_terminal(size: Option<(u16, u16)>, console: bool) -> Result<(), InitFailure> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| InitFailure::os("open /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| InitFailure::os("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| InitFailure::os("unlockpt", e))?;
    let slave_path = nix::pty::ptsname_r(&master).map_err(|e| InitFailure::os("ptsname", e))?;
    let slave: OwnedFd = nix::fcntl::open(
        slave_path.as_str(),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open just returned this fd and nothing else owns it.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .map_err(|e| InitFailure::os(format!("open {slave_path}"), e))?;
    // A 0x0 terminal confuses programs; without a consoleSize start at the classic 24x80
    // until the runtime sends ResizeTerminal.
    let (rows, cols) = size.unwrap_or(DEFAULT_TERMINAL_SIZE);
    super::stdio::set_window_size(master.as_raw_fd(), rows, cols)
        .map_err(|e| InitFailure::os("set terminal size", e))?;
    if console {
        bind_console(Path::new(&slave_path))?;
    }
    // SAFETY: TIOCSCTTY takes an int argument; the fd is our open slave and we are a
    // session leader without a controlling terminal.
    let ret = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY as _, 0) };
    Errno::result(ret).map_err(|e| InitFailure::os("set controlling terminal", e))?;
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target)
            .map_err(|e| InitFailure::os("terminal as stdio", e))?;
    }
    sync::send_blocking(SYNC_FD, &FromInit::Pty, Some(master.as_raw_fd()))
        .map_err(|e| InitFailure::internal(e.to_string()))?;
    Ok(())
}

fn bind_console(slave: &Path) -> Result<(), InitFailure> {
    let console = PathBuf::from("/dev/console");
    if std::fs::symlink_metadata(&console).is_err() {
        std::fs::File::create(&console).map_err(|e| {
            InitFailure::os(
                "create /dev/console",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    nix::mount::mount(
        Some(slave),
        &console,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| InitFailure::os("bind /dev/console", e))
}

fn switch_user(user: &oci_spec::runtime::User) -> Result<(), InitFailure> {
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| InitFailure::os("setgroups", e))?;
    nix::unistd::setgid(Gid::from_raw(user.gid()))
        .map_err(|e| InitFailure::os(format!("setgid {}", user.gid()), e))?;
    nix::unistd::setuid(Uid::from_raw(user.uid()))
        .map_err(|e| InitFailure::os(format!("setuid {}", user.uid()), e))?;
    if let Some(umask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }
    Ok(())
}

/// The process starts with default dispositions and nothing blocked, whatever the agent
/// had (it ignores SIGPIPE, and ignored signals survive exec).
fn reset_signals() {
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
