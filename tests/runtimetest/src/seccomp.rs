//! linux.seccomp: the filter is on, and the ERRNO rules (and an ERRNO default) hold for the
//! syscalls this checker knows how to make harmlessly. Nothing else is ever called.

use serde_json::Value;

use crate::report::Report;
use crate::sys::{self, status_field};
use crate::{array, at};

/// A probe directory for mkdirat: removed again if the call succeeds.
const PROBE_DIR: &str = "/tmp/.runv-runtimetest-seccomp";

/// Makes one syscall; returns the errno it failed with, or 0.
type Probe = fn() -> i32;

/// The syscalls the checker can make without changing anything; each returns the errno it
/// failed with, or 0.
const SAFE: &[(&str, Probe)] = &[
    ("mkdirat", probe_mkdirat),
    ("fchmodat", probe_fchmodat),
    ("getcwd", probe_getcwd),
    ("uname", probe_uname),
    ("sethostname", probe_sethostname),
    ("personality", probe_personality),
    ("getpriority", probe_getpriority),
    ("sched_getaffinity", probe_sched_getaffinity),
];

fn result(rc: libc::c_long) -> i32 {
    if rc < 0 {
        sys::errno()
    } else {
        0
    }
}

fn probe_mkdirat() -> i32 {
    let path = sys::cstring(PROBE_DIR);
    // SAFETY: mkdirat(2) of a NUL-terminated path; the directory is removed if made.
    let rc = unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), 0o700) };
    let errno = result(rc);
    if rc == 0 {
        let _ = std::fs::remove_dir(PROBE_DIR);
    }
    errno
}

fn probe_fchmodat() -> i32 {
    // The mode /dev/null already has: nothing changes when the call is allowed.
    let path = sys::cstring("/dev/null");
    let mode = std::fs::metadata("/dev/null")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o666);
    // SAFETY: fchmodat(2) of a NUL-terminated path to its current mode.
    result(unsafe { libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, path.as_ptr(), mode, 0) })
}

fn probe_getcwd() -> i32 {
    let mut buf = [0u8; 4096];
    // SAFETY: getcwd(2) writes at most buf.len() bytes into buf.
    result(unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) })
}

fn probe_uname() -> i32 {
    // SAFETY: utsname is plain old data; zeroed is valid for the kernel to fill.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) writes only into the struct we pass.
    result(unsafe { libc::syscall(libc::SYS_uname, &mut uts) })
}

fn probe_sethostname() -> i32 {
    // The current name again: nothing changes when the call is allowed.
    let name = sys::uname()
        .map(|u| sys::field_str(&u.nodename))
        .unwrap_or_default();
    // SAFETY: sethostname(2) reads name.len() bytes of name.
    result(unsafe { libc::syscall(libc::SYS_sethostname, name.as_ptr(), name.len()) })
}

fn probe_personality() -> i32 {
    // 0xffffffff only queries the persona.
    // SAFETY: personality(2) with the query value changes nothing.
    result(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) })
}

fn probe_getpriority() -> i32 {
    // SAFETY: getpriority(2) of this process only reads.
    result(unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) })
}

fn probe_sched_getaffinity() -> i32 {
    let mut mask = [0u64; 16];
    // SAFETY: sched_getaffinity(2) writes at most size_of_val(&mask) bytes into mask.
    result(unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    })
}

/// What a rule's action means for a probe: `Some(errno)` for an ERRNO action, `None` for
/// allow (and log), which is checked as "not refused with the errno".
enum Expect {
    Errno(i32),
    Allowed,
}

fn action_expect(action: &str, errno_ret: Option<i64>) -> Option<Expect> {
    match action {
        "SCMP_ACT_ERRNO" => Some(Expect::Errno(
            errno_ret
                .and_then(|e| i32::try_from(e).ok())
                .unwrap_or(libc::EPERM),
        )),
        "SCMP_ACT_ALLOW" | "SCMP_ACT_LOG" => Some(Expect::Allowed),
        // Kill, trap, trace, notify: never probed.
        _ => None,
    }
}

pub fn check(spec: &Value, report: &mut Report) {
    let Some(seccomp) = at(spec, "/linux/seccomp") else {
        return;
    };
    report.expect_eq(
        "linux.seccomp: filter mode",
        Some("2".to_string()),
        status_field("Seccomp"),
    );
    let syscalls = array(spec, "/linux/seccomp/syscalls");
    for &(name, probe) in SAFE {
        // The rule that names this syscall without argument conditions; a conditional rule
        // makes the outcome depend on the arguments, so the syscall is left alone.
        let mut decided: Option<Option<Expect>> = None;
        let mut conditional = false;
        for rule in syscalls {
            let names = rule["names"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !names.iter().any(|n| n == name) {
                continue;
            }
            if rule["args"].as_array().is_some_and(|a| !a.is_empty()) {
                conditional = true;
                continue;
            }
            decided = Some(action_expect(
                rule["action"].as_str().unwrap_or(""),
                rule["errnoRet"].as_i64(),
            ));
        }
        let check = format!("linux.seccomp[{name}]");
        let explicit = decided.is_some();
        let expect = match decided {
            Some(expect) => expect,
            None if conditional => continue,
            None => action_expect(
                seccomp["defaultAction"].as_str().unwrap_or(""),
                seccomp["defaultErrnoRet"].as_i64(),
            ),
        };
        match expect {
            Some(Expect::Errno(want)) => {
                report.expect_eq(&check, sys::errno_name(want), sys::errno_name(probe()))
            }
            Some(Expect::Allowed) if explicit => {
                // Allowed: any outcome but a refusal the filter would give is fine; the
                // probes only fail on their own for a reason (no permission, ...).
                let errno = probe();
                if errno == libc::ENOSYS {
                    report.fail(&check, "allowed", "ENOSYS");
                } else {
                    report.ok(&check);
                }
            }
            _ => {}
        }
    }
}
