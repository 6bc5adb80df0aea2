//! Ctrl-Alt-Del as a graceful shutdown of the guest.
//!
//! runv-vmm's `shutdown` API request presses Ctrl-Alt-Del on its emulated i8042 (QEMU's
//! `sendkey ctrl-alt-delete` does the same on a machine with an i8042). The guest kernel's
//! VT keyboard handler then reboots at once, unless PID 1 has turned that off with
//! `reboot(RB_DISABLE_CAD)`: then it sends SIGINT to PID 1 instead. `install` turns the
//! immediate reboot off and, on that SIGINT, does what the Shutdown request does: every
//! process but PID 1 (the containers) is killed, the filesystems are synced and
//! unmounted, and the VM is rebooted, which ends it (`reboot=k` under runv-vmm,
//! `reboot=t` with `-no-reboot` under QEMU).
//!
//! The signal handler only writes a byte to a pipe; a dedicated thread does the work, so
//! the shutdown does not depend on the async runtime being responsive. Only a SIGINT sent
//! by the kernel (`SI_KERNEL`) counts: a forked child that has not exec'd yet shares the
//! handler and the pipe, and a SIGINT sent to it must not stop the guest.

use std::fs;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Write end of the pipe the handler signals through; -1 until `install`.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// How long the killed processes get to be gone before the unmounts.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Turns Ctrl-Alt-Del into a graceful shutdown. PID 1 only; failures go to stderr (this
/// runs before logging exists) and leave the kernel's default (an immediate reboot).
pub fn install() {
    if let Err(err) = try_install() {
        eprintln!("runv-agent: Ctrl-Alt-Del shutdown not set up: {err}");
    }
}

fn try_install() -> std::io::Result<()> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let read_end = fs::File::from(read_end);
    std::thread::Builder::new()
        .name("cad-shutdown".into())
        .spawn(move || wait_and_shut_down(read_end))?;
    PIPE_WRITE.store(
        std::os::fd::IntoRawFd::into_raw_fd(write_end),
        Ordering::SeqCst,
    );
    // SAFETY: an all-zero sigaction is a valid value (no flags, empty mask).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigint;
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `action` is a valid sigaction whose handler only does async-signal-safe work.
    if unsafe { libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    set_cad_enabled(false)?;
    Ok(())
}

extern "C" fn on_sigint(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (checked for null anyway).
    let from_kernel = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if from_kernel && fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is one valid byte.
        let _ = unsafe { libc::write(fd, std::ptr::addr_of!(byte).cast(), 1) };
    }
}

fn wait_and_shut_down(mut pipe: fs::File) {
    use std::io::Read;
    let mut byte = [0u8; 1];
    loop {
        match pipe.read(&mut byte) {
            Ok(1) => break,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // The write end lives for the life of the process: nothing else can happen.
            _ => return,
        }
    }
    shut_down();
}

/// The Shutdown request's work without its reply: kill, sync, unmount, reboot.
fn shut_down() {
    tracing::info!("Ctrl-Alt-Del: shutting down");
    // From PID 1, -1 reaches every process but itself: all container processes.
    if let Err(err) = kill(Pid::from_raw(-1), Signal::SIGKILL) {
        tracing::debug!(%err, "kill(-1, SIGKILL)");
    }
    let deadline = Instant::now() + KILL_WAIT;
    while live_processes() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::unistd::sync();
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in mount_points(&mounts).iter().rev() {
        if target == "/" {
            continue;
        }
        if umount2(target.as_str(), MntFlags::empty()).is_err() {
            let _ = umount2(target.as_str(), MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
    tracing::info!("powering off");
    let err = reboot(RebootMode::RB_AUTOBOOT);
    tracing::error!(?err, "reboot failed");
}

/// User processes other than this one that have not exited yet.
fn live_processes() -> usize {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id();
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| is_live_user_process(&stat))
        })
        .count()
}

/// Whether a `/proc/<pid>/stat` line is a process that is neither a kernel thread nor a
/// zombie (or dead).
fn is_live_user_process(stat: &str) -> bool {
    // The command name is in parentheses and may hold anything, ')' included.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("Z");
    // Then ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags = fields
        .nth(5)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    !matches!(state, "Z" | "X" | "x") && flags & PF_KTHREAD == 0
}

/// Mount points of a `/proc/self/mounts` text, in mount order, with the octal escapes
/// (`\040` for a space and so on) decoded.
fn mount_points(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape)
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_tell_user_processes_from_kernel_threads_and_zombies() {
        assert!(is_live_user_process(
            "42 (sh) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5 0 0"
        ));
        // kthreadd: PF_KTHREAD set.
        assert!(!is_live_user_process(
            "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0"
        ));
        assert!(!is_live_user_process(
            "43 (a) b) Z 1 43 43 0 -1 4194564 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0"
        ));
        assert!(is_live_user_process(
            "44 (odd) name) R 1 44 44 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0"
        ));
        assert!(!is_live_user_process("garbage"));
    }

    #[test]
    fn mount_points_are_unescaped_in_order() {
        let mounts = "none / rootfs rw 0 0\n\
                      proc /proc proc rw,nosuid 0 0\n\
                      runvfs /run/a\\040b virtiofs rw 0 0\n";
        assert_eq!(mount_points(mounts), ["/", "/proc", "/run/a b"]);
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn this_process_sees_itself_as_a_live_user_process() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(is_live_user_process(&stat));
    }
}
