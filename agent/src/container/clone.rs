//! Clones a container's init process, or an exec process, into its namespaces.
//!
//! The agent is multi-threaded, so the child does nothing between clone and exec but
//! `dup2` and `execve` with arguments prepared beforehand: it re-executes this binary as
//! `runv-agent __container-init`, which does the real setup single-threaded.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sched::CloneFlags;

use crate::reaper::{ExitReceiver, Reaper};

/// Stack of the cloned child until it execs (it only calls dup2 and execve).
const CHILD_STACK_SIZE: usize = 64 * 1024;

/// The fds the init process gets: stdin, stdout, stderr and the sync socket, as 0-3.
pub struct InitFds<'a> {
    pub stdio: [&'a OwnedFd; 3],
    pub sync: &'a OwnedFd,
}

/// Duplicates `fd` to a number of at least 10, so moving the copies to 0-3 in the child
/// can never overwrite one that is still to be moved.
fn dup_high(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: fcntl just created this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// What to clone: the program mode and the namespaces.
pub struct CloneSpec<'a> {
    /// argv[1] of the re-executed agent: the container init or an exec process.
    pub mode: &'static str,
    /// Namespaces the clone creates.
    pub flags: CloneFlags,
    /// A pid namespace to clone the child into (an open `/proc/<pid>/ns/pid`).
    pub pid_ns: Option<&'a std::fs::File>,
    /// The child waits for one byte on the sync socket before it execs: the go-ahead once
    /// the agent has written the id mappings of its new user namespace. It then takes the
    /// ids 0 of the namespace (it keeps the agent's until it does, unmapped there): it
    /// must exec as root of the namespace to keep its capabilities for the setup.
    pub wait_before_exec: bool,
}

/// Clones a process that re-executes this binary in `spec.mode` and registers it with the
/// reaper.
///
/// Joining a pid namespace takes a `setns` by the cloning thread itself (a process cannot
/// move into another pid namespace; only its future children can). That is done on a
/// short-lived thread of its own, so no thread of the agent's runtime changes namespace.
pub fn clone_child(
    reaper: &Reaper,
    fds: InitFds<'_>,
    spec: CloneSpec<'_>,
) -> Result<(nix::unistd::Pid, ExitReceiver), Errno> {
    let copies = [
        dup_high(fds.stdio[0])?,
        dup_high(fds.stdio[1])?,
        dup_high(fds.stdio[2])?,
        dup_high(fds.sync)?,
    ];
    let sources: [RawFd; 4] = [
        copies[0].as_raw_fd(),
        copies[1].as_raw_fd(),
        copies[2].as_raw_fd(),
        copies[3].as_raw_fd(),
    ];
    let result = match spec.pid_ns {
        None => clone_exec(reaper, sources, &spec),
        Some(pid_ns) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(pid_ns, CloneFlags::CLONE_NEWPID)?;
                    clone_exec(reaper, sources, &spec)
                })
                .join()
                .unwrap_or(Err(Errno::EIO))
        }),
    };
    drop(copies);
    result
}

/// The clone itself: the child moves `sources` to fds 0-3 and execs the agent in
/// `spec.mode`.
fn clone_exec(
    reaper: &Reaper,
    sources: [RawFd; 4],
    spec: &CloneSpec<'_>,
) -> Result<(nix::unistd::Pid, ExitReceiver), Errno> {
    let (mode, flags, wait) = (spec.mode, spec.flags, spec.wait_before_exec);
    let targets: [RawFd; 4] = [0, 1, 2, 3];
    let exe = CString::new("/proc/self/exe").map_err(|_| Errno::EINVAL)?;
    let arg0 = CString::new("runv-agent").map_err(|_| Errno::EINVAL)?;
    let arg1 = CString::new(mode).map_err(|_| Errno::EINVAL)?;
    let argv: [*const libc::c_char; 3] = [arg0.as_ptr(), arg1.as_ptr(), ptr::null()];
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    let mut stack = vec![0u8; CHILD_STACK_SIZE];

    let child = Box::new(|| -> isize {
        if wait && !(wait_for_go(sources[3]) && become_root()) {
            // SAFETY: _exit is async-signal-safe and ends the child at once.
            unsafe { libc::_exit(126) };
        }
        for (source, target) in sources.iter().zip(targets.iter()) {
            // SAFETY: dup2 is async-signal-safe; both are plain fd numbers.
            if unsafe { libc::dup2(*source, *target) } < 0 {
                // SAFETY: _exit is async-signal-safe and ends the child at once.
                unsafe { libc::_exit(126) };
            }
        }
        // SAFETY: execve is async-signal-safe; the path and the NULL-terminated argv and
        // envp arrays were built before the clone and live in this copy of the memory.
        unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        // SAFETY: as above; the exec failed.
        unsafe { libc::_exit(127) }
    });
    reaper.spawn(|| {
        // SAFETY: the child runs only the closure above (dup2, execve, _exit), which is safe
        // between clone and exec in a multi-threaded process; `stack` outlives the call
        // and the child has its own copy of it (no CLONE_VM).
        unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
    })
}

/// Reads the one-byte go-ahead from `sync` in the cloned child; false when the agent
/// closed the socket or the read failed. Only async-signal-safe calls.
fn wait_for_go(sync: RawFd) -> bool {
    let mut byte = 0u8;
    loop {
        // SAFETY: read is async-signal-safe; the buffer is one byte on this stack.
        let n = unsafe { libc::read(sync, ptr::addr_of_mut!(byte).cast(), 1) };
        if n == 1 {
            return true;
        }
        // SAFETY: reading this thread's errno is async-signal-safe.
        if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        }
        return false;
    }
}

/// Sets the real, effective and saved ids to 0 of the child's user namespace; false when
/// they are not mapped. Raw system calls: the libc wrappers would try to reach the
/// agent's other threads, which the child does not have.
fn become_root() -> bool {
    // SAFETY: setresgid/setresuid take plain integers and are async-signal-safe as raw
    // system calls.
    unsafe {
        libc::syscall(libc::SYS_setresgid, 0, 0, 0) == 0
            && libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0
    }
}
