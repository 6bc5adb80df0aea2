//! Seccomp filters per thread kind, installed once setup is done.
//!
//! All files, sockets, KVM objects and memory are set up before the filters go on, so the
//! running monitor needs no `open`, `execve`, `fork`, `mount`, `ptrace` or the like. The
//! lists allow what the running threads do, one list per thread kind:
//!
//! * vCPU threads run KVM_RUN and device register accesses (device activation included:
//!   vhost-user messages, vsock connects to host listeners);
//! * the device thread runs the virtio queue and backend processing (disk I/O and flushes,
//!   tap frames, the vsock muxer: accepting host clients, connecting to host listeners); it
//!   creates no eventfds, sets no socket options and removes no files;
//! * the main thread runs the exit, console and API events: it accepts console and API
//!   clients and sets their write timeouts, removes its sockets at the end, and makes no new
//!   sockets and no connections.
//!
//! Anything else kills the process (SIGSYS), which `--no-seccomp` turns off for debugging.
//!
//! `ioctl` is allowed without argument filtering (KVM_RUN on vCPU threads, FIONBIO when a new
//! socket is made non-blocking).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: exit, console input, API.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The device thread: virtio queues and device backends.
    Device,
}

/// Errors while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not compile.
    #[error("Cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("Cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Syscalls every runv-vmm thread makes.
fn common_syscalls() -> Vec<libc::c_long> {
    let v = vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_ioctl,
        libc::SYS_futex,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_getrandom,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_tgkill,
        // musl's pthread_kill (the vCPU kick) uses tkill.
        libc::SYS_tkill,
        libc::SYS_rseq,
        libc::SYS_set_robust_list,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_shutdown,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_unlinkat,
    ];
    #[cfg(target_arch = "x86_64")]
    let v = {
        let mut v = v;
        v.extend_from_slice(&[libc::SYS_epoll_wait, libc::SYS_unlink]);
        v
    };
    v
}

/// The filter for `kind`.
pub fn filter_for(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut syscalls = common_syscalls();
    match kind {
        ThreadKind::Vcpu => {}
        ThreadKind::Main => {
            syscalls.extend_from_slice(&[
                libc::SYS_accept4,
                libc::SYS_eventfd2,
                // API replies use a socket write timeout.
                libc::SYS_setsockopt,
            ]);
            syscalls.retain(|s| ![libc::SYS_socket, libc::SYS_connect].contains(s));
        }
        ThreadKind::Device => {
            // The vsock muxer accepts host clients on its listener.
            syscalls.push(libc::SYS_accept4);
            #[cfg(target_arch = "x86_64")]
            syscalls.retain(|s| *s != libc::SYS_unlink);
            syscalls.retain(|s| *s != libc::SYS_unlinkat);
        }
    }
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        syscalls.into_iter().map(|s| (s, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Build)
}

/// Installs the filter for `kind` on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = filter_for(kind)?;
    seccompiler::apply_filter(&prog).map_err(SeccompError::Install)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        assert!(!filter_for(ThreadKind::Main).unwrap().is_empty());
        assert!(!filter_for(ThreadKind::Vcpu).unwrap().is_empty());
        assert!(!filter_for(ThreadKind::Device).unwrap().is_empty());
    }

    /// Runs `syscall` (with zero arguments) under the filter for `kind` in a forked child;
    /// returns the child's wait status, or None when seccomp is not available.
    fn status_under(kind: ThreadKind, syscall: libc::c_long) -> Option<i32> {
        let prog = filter_for(kind).unwrap();
        // SAFETY: the child only makes raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_err() {
                // SAFETY: terminating the child.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: a raw syscall with zero arguments: it fails, succeeds harmlessly or is
            // refused by the filter.
            unsafe { libc::syscall(syscall, 0, 0, 0, 0) };
            // SAFETY: terminating the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 {
            return None;
        }
        Some(status)
    }

    #[test]
    fn each_thread_kind_has_its_own_list() {
        let killed = |s: i32| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGSYS;
        let lived = |s: i32| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0;
        let cases: [(ThreadKind, libc::c_long, bool); 8] = [
            (ThreadKind::Device, libc::SYS_eventfd2, false),
            (ThreadKind::Device, libc::SYS_setsockopt, false),
            (ThreadKind::Device, libc::SYS_unlinkat, false),
            (ThreadKind::Device, libc::SYS_accept4, true),
            (ThreadKind::Main, libc::SYS_eventfd2, true),
            (ThreadKind::Main, libc::SYS_connect, false),
            (ThreadKind::Main, libc::SYS_socket, false),
            (ThreadKind::Vcpu, libc::SYS_accept4, false),
        ];
        for (kind, syscall, allowed) in cases {
            let Some(status) = status_under(kind, syscall) else {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: each_thread_kind_has_its_own_list: seccomp is not available"
                );
                return;
            };
            if allowed {
                assert!(lived(status), "{kind:?} {syscall}: status {status:#x}");
            } else {
                assert!(killed(status), "{kind:?} {syscall}: status {status:#x}");
            }
        }
    }

    #[test]
    fn filter_blocks_forbidden_syscall_in_child() {
        // Run in a forked child so the test process keeps its own syscalls. The program is
        // built before the fork so the child does not allocate.
        let prog = filter_for(ThreadKind::Vcpu).unwrap();
        // SAFETY: the child only makes raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_err() {
                // SAFETY: terminating the child.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: getppid is not on the list: the filter kills the child here.
            unsafe { libc::syscall(libc::SYS_getppid) };
            // SAFETY: terminating the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 {
            // The kernel (or an emulator such as qemu-user) refused seccomp itself.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: filter_blocks_forbidden_syscall_in_child: seccomp is not available"
            );
            return;
        }
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
