//! `process`: arguments, environment, working directory, user, umask, capabilities,
//! noNewPrivileges, rlimits, oomScoreAdj and terminal.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::report::Report;
use crate::sys::status_field;
use crate::{array, at, strings};

/// Capability names in bit order (linux/capability.h).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// getrlimit(2)'s resource type differs between the C libraries.
#[cfg(target_env = "musl")]
type Resource = libc::c_int;
#[cfg(not(target_env = "musl"))]
type Resource = libc::__rlimit_resource_t;

/// rlimit names of the spec and their resource numbers.
const RLIMITS: &[(&str, Resource)] = &[
    ("RLIMIT_CPU", libc::RLIMIT_CPU),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
    ("RLIMIT_DATA", libc::RLIMIT_DATA),
    ("RLIMIT_STACK", libc::RLIMIT_STACK),
    ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ("RLIMIT_RSS", libc::RLIMIT_RSS),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("RLIMIT_AS", libc::RLIMIT_AS),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", libc::RLIMIT_NICE),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
];

pub fn check(spec: &Value, argv: &[String], report: &mut Report) {
    let Some(process) = at(spec, "/process") else {
        report.skip("process", "the spec has no process");
        return;
    };
    let args = strings(spec, "/process/args");
    report.expect_eq("process.args", args, argv.to_vec());

    for entry in strings(spec, "/process/env") {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        let check = format!("process.env[{key}]");
        match std::env::var(key) {
            Ok(got) => report.expect_eq(&check, value.to_string(), got),
            Err(_) => report.fail(&check, format!("{key}={value}"), "unset"),
        }
    }

    if let Some(cwd) = process["cwd"].as_str() {
        match std::env::current_dir() {
            Ok(dir) => report.expect_eq("process.cwd", normalize(cwd), dir.display().to_string()),
            Err(e) => report.error("process.cwd", format!("getcwd: {e}")),
        }
    }

    check_user(process, report);
    check_capabilities(spec, report);

    if let Some(nnp) = process["noNewPrivileges"].as_bool() {
        report.expect_eq(
            "process.noNewPrivileges",
            Some(if nnp { "1" } else { "0" }.to_string()),
            status_field("NoNewPrivs"),
        );
    }

    for rlimit in array(spec, "/process/rlimits") {
        let name = rlimit["type"].as_str().unwrap_or("");
        let check = format!("process.rlimits[{name}]");
        let Some(&(_, resource)) = RLIMITS.iter().find(|(n, _)| *n == name) else {
            report.skip(&check, "an rlimit this checker does not know");
            continue;
        };
        let mut got = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes only into the struct we pass.
        if unsafe { libc::getrlimit(resource, &mut got) } != 0 {
            report.error(
                &check,
                format!("getrlimit: {}", std::io::Error::last_os_error()),
            );
            continue;
        }
        let expected = (rlimit["soft"].as_u64(), rlimit["hard"].as_u64());
        report.expect_eq(&check, expected, (Some(got.rlim_cur), Some(got.rlim_max)));
    }

    if let Some(adj) = process["oomScoreAdj"].as_i64() {
        let got = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok());
        report.expect_eq("process.oomScoreAdj", Some(adj), got);
    }

    if let Some(terminal) = process["terminal"].as_bool() {
        // SAFETY: isatty(3) only inspects the descriptor.
        let tty = unsafe { libc::isatty(1) } == 1;
        report.expect_eq("process.terminal", terminal, tty);
    }
}

/// A path without a trailing slash (other than the root's).
fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

fn check_user(process: &Value, report: &mut Report) {
    let user = &process["user"];
    // SAFETY: these calls only return the process's ids.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if let Some(want) = user["uid"].as_u64() {
        report.expect_eq(
            "process.user.uid",
            (want, want),
            (u64::from(uid), u64::from(euid)),
        );
    }
    if let Some(want) = user["gid"].as_u64() {
        report.expect_eq(
            "process.user.gid",
            (want, want),
            (u64::from(gid), u64::from(egid)),
        );
    }
    if let Some(extra) = user["additionalGids"].as_array() {
        let expected: BTreeSet<u64> = extra.iter().filter_map(Value::as_u64).collect();
        match groups() {
            // The primary group may or may not be listed among the supplementary ones.
            Ok(got) => {
                let got: BTreeSet<u64> = got
                    .into_iter()
                    .filter(|g| *g != u64::from(gid) || expected.contains(g))
                    .collect();
                report.expect_eq("process.user.additionalGids", expected, got);
            }
            Err(e) => report.error("process.user.additionalGids", format!("getgroups: {e}")),
        }
    }
    if let Some(umask) = user["umask"].as_u64() {
        let got = status_field("Umask").and_then(|u| u64::from_str_radix(&u, 8).ok());
        report.expect_eq(
            "process.user.umask",
            format!("{umask:04o}"),
            got.map_or("unknown".into(), |g| format!("{g:04o}")),
        );
    }
}

fn groups() -> std::io::Result<Vec<u64>> {
    let mut buf = vec![0 as libc::gid_t; 1024];
    let len = libc::c_int::try_from(buf.len()).unwrap_or(0);
    // SAFETY: getgroups(2) writes at most `len` entries into `buf`, which holds that many.
    let n = unsafe { libc::getgroups(len, buf.as_mut_ptr()) };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    Ok(buf[..n].iter().map(|g| u64::from(*g)).collect())
}

/// The mask of capability names; names this kernel does not have (above cap_last_cap) are
/// left out, as runtimes drop them.
fn mask(names: &[String], last: usize) -> u64 {
    names
        .iter()
        .filter_map(|n| CAPABILITIES.iter().position(|c| c == n))
        .filter(|bit| *bit <= last)
        .fold(0, |m, bit| m | (1u64 << bit))
}

fn names(mask: u64) -> String {
    let list: Vec<&str> = CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, n)| *n)
        .collect();
    let unknown = mask >> CAPABILITIES.len();
    if unknown != 0 {
        format!("[{}] + unknown bits {unknown:#x}", list.join(" "))
    } else {
        format!("[{}]", list.join(" "))
    }
}

fn check_capabilities(spec: &Value, report: &mut Report) {
    let Some(caps) = at(spec, "/process/capabilities") else {
        return;
    };
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(CAPABILITIES.len() - 1);
    let set = |key: &str| {
        let list: Vec<String> = caps[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        mask(&list, last)
    };
    let (bounding, inheritable, permitted, ambient) = (
        set("bounding"),
        set("inheritable"),
        set("permitted"),
        set("ambient"),
    );
    // A set the spec leaves out is empty. The runtime sets the five sets before it executes this binary, and execve(2) turns
    // them into what this process has (capabilities(7)): without file capabilities, root's
    // file sets count as full, so root gets inheritable | bounding | ambient as permitted
    // (and as effective when its effective uid is 0); anyone else gets the ambient set. The
    // spec's permitted and effective sets are only seen through that rule.
    // SAFETY: these calls only return the process's ids.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    let ambient = ambient & permitted & inheritable;
    let (exp_prm, exp_eff) = if uid == 0 || euid == 0 {
        let prm = inheritable | bounding | ambient;
        (prm, if euid == 0 { prm } else { ambient })
    } else {
        (ambient, ambient)
    };
    let expected = [
        ("CapInh", "inheritable", inheritable),
        ("CapPrm", "permitted", exp_prm),
        ("CapEff", "effective", exp_eff),
        ("CapBnd", "bounding", bounding),
        ("CapAmb", "ambient", ambient),
    ];
    for (field, key, want) in expected {
        let check = format!("process.capabilities.{key}");
        match status_field(field).and_then(|v| u64::from_str_radix(&v, 16).ok()) {
            Some(got) if got == want => report.ok(&check),
            Some(got) => report.fail(&check, names(want), names(got)),
            None => report.error(&check, format!("no {field} in /proc/self/status")),
        }
    }
}
