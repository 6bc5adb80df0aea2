//! Clones a container's init process into its namespaces.
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

use crate::cli::CONTAINER_INIT_ARG;
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

/// Clones the init process into new mount, pid, uts and ipc namespaces and registers it
/// with the reaper.
pub fn clone_init(
    reaper: &Reaper,
    fds: InitFds<'_>,
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
    let targets: [RawFd; 4] = [0, 1, 2, 3];
    let exe = CString::new("/proc/self/exe").map_err(|_| Errno::EINVAL)?;
    let arg0 = CString::new("runv-agent").map_err(|_| Errno::EINVAL)?;
    let arg1 = CString::new(CONTAINER_INIT_ARG).map_err(|_| Errno::EINVAL)?;
    let argv: [*const libc::c_char; 3] = [arg0.as_ptr(), arg1.as_ptr(), ptr::null()];
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    let mut stack = vec![0u8; CHILD_STACK_SIZE];
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;

    let child = Box::new(|| -> isize {
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
    let result = reaper.spawn(|| {
        // SAFETY: the child runs only the closure above (dup2, execve, _exit), which is safe
        // between clone and exec in a multi-threaded process; `stack` outlives the call
        // and the child has its own copy of it (no CLONE_VM).
        unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
    });
    drop(copies);
    result
}
