//! hostname, domainname, namespaces, root.readonly and sysctls.

use serde_json::Value;

use crate::report::Report;
use crate::sys;
use crate::{array, at};

pub fn check(spec: &Value, report: &mut Report) {
    check_uts(spec, report);
    check_namespaces(spec, report);
    check_root(spec, report);
    check_sysctls(spec, report);
}

/// Whether this runs inside a runv sandbox VM (its guest kernel's release ends in `-runv`).
pub fn in_runv_vm() -> bool {
    sys::uname().is_some_and(|u| sys::field_str(&u.release).ends_with("-runv"))
}

fn check_uts(spec: &Value, report: &mut Report) {
    let Some(uts) = sys::uname() else {
        report.error("hostname", "uname failed");
        return;
    };
    if let Some(name) = spec["hostname"].as_str() {
        report.expect_eq("hostname", name.to_string(), sys::field_str(&uts.nodename));
    }
    if let Some(name) = spec["domainname"].as_str() {
        report.expect_eq(
            "domainname",
            name.to_string(),
            sys::field_str(&uts.domainname),
        );
    }
}

fn check_namespaces(spec: &Value, report: &mut Report) {
    for ns in array(spec, "/linux/namespaces") {
        let typ = ns["type"].as_str().unwrap_or("");
        let check = format!("linux.namespaces[{typ}]");
        if ns
            .get("path")
            .and_then(Value::as_str)
            .is_some_and(|p| !p.is_empty())
        {
            report.skip(
                &check,
                "joining a namespace by path is not checked from inside",
            );
            continue;
        }
        match typ {
            "pid" => report.expect_eq(&check, 1, std::process::id()),
            "cgroup" => {
                // In a cgroup namespace of its own, the process's cgroup is the root.
                let paths: Vec<String> = std::fs::read_to_string("/proc/self/cgroup")
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
                    .filter(|p| p != "/")
                    .collect();
                report.expect_eq(&check, Vec::<String>::new(), paths);
            }
            "network" if in_runv_vm() => report.skip(
                &check,
                "the network namespace is the sandbox VM's: its interfaces are the pod's",
            ),
            "network" => {
                let mut links: Vec<String> = std::fs::read_dir("/sys/class/net")
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                links.sort();
                report.expect_eq(&check, vec!["lo".to_string()], links);
            }
            "user" => {
                check_id_map(spec, "uidMappings", "/proc/self/uid_map", report);
                check_id_map(spec, "gidMappings", "/proc/self/gid_map", report);
            }
            "uts" | "ipc" | "mount" | "time" => report.skip(
                &check,
                "a new namespace looks like its parent from inside (its effects are checked)",
            ),
            _ => report.skip(&check, "an unknown namespace type"),
        }
    }
}

fn check_id_map(spec: &Value, key: &str, file: &str, report: &mut Report) {
    let check = format!("linux.{key}");
    let expected: Vec<(u64, u64, u64)> = array(spec, &format!("/linux/{key}"))
        .iter()
        .map(|m| {
            (
                m["containerID"].as_u64().unwrap_or(0),
                m["hostID"].as_u64().unwrap_or(0),
                m["size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let got: Vec<(u64, u64, u64)> = match std::fs::read_to_string(file) {
        Ok(text) => text
            .lines()
            .filter_map(|l| {
                let n: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect();
                (n.len() == 3).then(|| (n[0], n[1], n[2]))
            })
            .collect(),
        Err(e) => {
            report.error(&check, format!("read {file}: {e}"));
            return;
        }
    };
    report.expect_eq(&check, expected, got);
}

fn check_root(spec: &Value, report: &mut Report) {
    if at(spec, "/root/readonly").and_then(Value::as_bool) != Some(true) {
        return;
    }
    let probe = sys::cstring("/.runv-runtimetest-probe");
    // SAFETY: mkdir(2) on a NUL-terminated path we own.
    let rc = unsafe { libc::mkdir(probe.as_ptr(), 0o700) };
    if rc == 0 {
        // SAFETY: rmdir(2) of the directory just made.
        unsafe { libc::rmdir(probe.as_ptr()) };
        report.fail("root.readonly", "mkdir / to fail with EROFS", "success");
    } else {
        report.expect_eq(
            "root.readonly",
            sys::errno_name(libc::EROFS),
            sys::errno_name(sys::errno()),
        );
    }
}

fn check_sysctls(spec: &Value, report: &mut Report) {
    let Some(sysctls) = at(spec, "/linux/sysctl").and_then(Value::as_object) else {
        return;
    };
    for (key, value) in sysctls {
        let check = format!("linux.sysctl[{key}]");
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let want = value.as_str().unwrap_or("");
        match std::fs::read_to_string(&path) {
            Ok(got) => report.expect_eq(&check, words(want), words(&got)),
            Err(e) => report.error(&check, format!("read {path}: {e}")),
        }
    }
}

/// Whitespace-separated words: /proc/sys separates multi-value entries with tabs.
fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}
