//! linux.devices, the default devices every container gets, and the effect of the device
//! cgroup rules (linux.resources.devices).

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde_json::Value;

use crate::array;
use crate::report::Report;
use crate::sys;

/// The character devices every container has: path, major, minor.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The symlinks every container has under /dev.
const DEFAULT_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// `c 1:3` style description of a node.
fn describe(meta: &std::fs::Metadata) -> String {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else if ft.is_dir() {
        "dir"
    } else {
        "file"
    };
    format!("{kind} {}:{}", major(meta.rdev()), minor(meta.rdev()))
}

pub fn check(spec: &Value, report: &mut Report) {
    for dev in array(spec, "/linux/devices") {
        check_device(dev, report);
    }
    check_defaults(report);
    check_cgroup_rules(spec, report);
}

fn check_device(dev: &Value, report: &mut Report) {
    let path = dev["path"].as_str().unwrap_or("");
    let check = format!("linux.devices[{path}]");
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            report.error(&check, format!("stat: {e}"));
            return;
        }
    };
    let typ = match dev["type"].as_str().unwrap_or("") {
        "u" => "c",
        t => t,
    };
    let want = if typ == "p" {
        "p 0:0".to_string()
    } else {
        format!(
            "{typ} {}:{}",
            dev["major"].as_u64().unwrap_or(0),
            dev["minor"].as_u64().unwrap_or(0)
        )
    };
    let got = describe(&meta);
    let got = if typ == "p" && got.starts_with("p ") {
        "p 0:0".to_string()
    } else {
        got
    };
    report.expect_eq(&format!("{check}.node"), want, got);
    if let Some(mode) = dev["fileMode"].as_u64() {
        report.expect_eq(
            &format!("{check}.fileMode"),
            format!("{:04o}", mode & 0o7777),
            format!("{:04o}", meta.mode() & 0o7777),
        );
    }
    if let Some(uid) = dev["uid"].as_u64() {
        report.expect_eq(&format!("{check}.uid"), uid, u64::from(meta.uid()));
    }
    if let Some(gid) = dev["gid"].as_u64() {
        report.expect_eq(&format!("{check}.gid"), gid, u64::from(meta.gid()));
    }
}

fn check_defaults(report: &mut Report) {
    for &(path, maj, min) in DEFAULT_DEVICES {
        let check = format!("default device {path}");
        match std::fs::metadata(path) {
            Ok(meta) => report.expect_eq(&check, format!("c {maj}:{min}"), describe(&meta)),
            Err(e) => report.error(&check, format!("stat: {e}")),
        }
    }
    for &(path, target) in DEFAULT_LINKS {
        let check = format!("default link {path}");
        match std::fs::read_link(path) {
            Ok(got) => report.expect_eq(&check, target.to_string(), got.display().to_string()),
            Err(e) => report.error(&check, format!("readlink: {e}")),
        }
    }
    // /dev/ptmx is the devpts instance's: a link to pts/ptmx, or a 5:2 node.
    let ptmx = match std::fs::read_link("/dev/ptmx") {
        Ok(target) => target.display().to_string(),
        Err(_) => std::fs::metadata("/dev/ptmx")
            .map(|m| describe(&m))
            .unwrap_or_else(|e| format!("stat: {e}")),
    };
    if ptmx == "pts/ptmx" || ptmx == "/dev/pts/ptmx" || ptmx == "c 5:2" {
        report.ok("default device /dev/ptmx");
    } else {
        report.fail("default device /dev/ptmx", "a link to pts/ptmx", ptmx);
    }
    // Their mounts are checked with the spec's mounts: here only that they are there.
    for path in ["/dev/pts", "/dev/shm", "/dev/mqueue"] {
        let check = format!("default directory {path}");
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => report.ok(&check),
            Ok(meta) => report.fail(&check, "a directory", describe(&meta)),
            Err(e) => report.error(&check, format!("stat: {e}")),
        }
    }
}

/// Whether the rules (in order, the last match wins, everything denied first) allow read
/// access to a device of `typ` `major`:`minor`.
fn allowed(rules: &[Value], typ: &str, major: u64, minor: u64) -> bool {
    let mut allow = false;
    for rule in rules {
        let rule_type = rule["type"].as_str().unwrap_or("a");
        let type_matches = rule_type == "a" || rule_type == typ;
        let num = |key: &str, want: u64| match rule[key].as_i64() {
            None | Some(-1) => true,
            Some(n) => u64::try_from(n).is_ok_and(|n| n == want),
        };
        let access = rule["access"].as_str().unwrap_or("rwm");
        if type_matches && num("major", major) && num("minor", minor) && access.contains('r') {
            allow = rule["allow"].as_bool().unwrap_or(false);
        }
    }
    allow
}

fn check_cgroup_rules(spec: &Value, report: &mut Report) {
    let rules = array(spec, "/linux/resources/devices");
    if rules.is_empty() {
        return;
    }
    for dev in array(spec, "/linux/devices") {
        let path = dev["path"].as_str().unwrap_or("");
        let typ = match dev["type"].as_str().unwrap_or("") {
            "u" => "c",
            t => t,
        };
        if typ != "c" && typ != "b" {
            continue;
        }
        let (maj, min) = (
            dev["major"].as_u64().unwrap_or(0),
            dev["minor"].as_u64().unwrap_or(0),
        );
        let check = format!("linux.resources.devices[{path}]");
        let c = sys::cstring(path);
        // SAFETY: open(2) of a NUL-terminated path, non-blocking so that no device waits;
        // the descriptor is closed below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        let errno = if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
            0
        } else {
            sys::errno()
        };
        if allowed(rules, typ, maj, min) {
            // Any error but EPERM (no such device behind the node, ...) is not the cgroup's.
            if errno == libc::EPERM {
                report.fail(&check, "open allowed", "EPERM");
            } else {
                report.ok(&check);
            }
        } else {
            report.expect_eq(&check, sys::errno_name(libc::EPERM), sys::errno_name(errno));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_matching_rule_wins() {
        let rules: Vec<Value> = serde_json::from_str(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
                {"allow":false,"type":"c","major":1,"minor":3,"access":"w"}]"#,
        )
        .unwrap();
        assert!(allowed(&rules, "c", 1, 3));
        assert!(!allowed(&rules, "c", 1, 5));
        assert!(!allowed(&rules, "b", 1, 3));
    }
}
