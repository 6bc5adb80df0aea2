//! mounts (presence, type, flags, tmpfs size and mode, propagation), rootfsPropagation,
//! maskedPaths and readonlyPaths.

use serde_json::Value;

use crate::report::Report;
use crate::sys;
use crate::{array, at, strings};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: Vec<String>,
    /// Optional fields (`shared:1`, `master:2`, `unbindable`).
    pub optional: Vec<String>,
    pub fs_type: String,
    /// Superblock options (`size=65536k,mode=755`).
    pub super_options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 4).unwrap_or(""), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this process's mount namespace, in mount order.
pub fn mountinfo() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                mount_point: unescape(left.get(4)?),
                options: left.get(5)?.split(',').map(str::to_string).collect(),
                optional: left
                    .get(6..)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                fs_type: right.first()?.to_string(),
                super_options: right
                    .get(2)
                    .map(|o| o.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The mount visible at `path`: the last one mounted there.
pub fn mount_at<'a>(mounts: &'a [MountInfo], path: &str) -> Option<&'a MountInfo> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    mounts.iter().rev().find(|m| m.mount_point == path)
}

/// The propagation type a mount's optional fields show.
fn propagation(m: &MountInfo) -> &'static str {
    if m.optional.iter().any(|o| o.starts_with("shared:")) {
        "shared"
    } else if m.optional.iter().any(|o| o.starts_with("master:")) {
        "slave"
    } else if m.optional.iter().any(|o| o == "unbindable") {
        "unbindable"
    } else {
        "private"
    }
}

/// The propagation an option asks for, if it is one.
fn propagation_option(option: &str) -> Option<&'static str> {
    Some(match option {
        "shared" | "rshared" => "shared",
        "slave" | "rslave" => "slave",
        "private" | "rprivate" => "private",
        "unbindable" | "runbindable" => "unbindable",
        _ => return None,
    })
}

/// A tmpfs `size=` in bytes (k, m, g suffixes; `%` is not resolved).
fn size_bytes(size: &str) -> Option<u64> {
    let (digits, unit) = match size.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => size.split_at(i),
        None => (size, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    // The kernel rounds up to whole pages.
    Some(n.checked_mul(factor)?.div_ceil(4096) * 4096)
}

pub fn check(spec: &Value, report: &mut Report) {
    let mounts = mountinfo();
    for m in array(spec, "/mounts") {
        check_mount(m, &mounts, report);
    }
    if let Some(prop) = at(spec, "/linux/rootfsPropagation").and_then(Value::as_str) {
        let check = "linux.rootfsPropagation";
        match (propagation_option(prop), mount_at(&mounts, "/")) {
            (Some(want), Some(root)) => report.expect_eq(check, want, propagation(root)),
            (None, _) => report.skip(check, format!("unknown propagation {prop:?}")),
            (_, None) => report.error(check, "no mount at / in /proc/self/mountinfo"),
        }
    }
    for path in strings(spec, "/linux/maskedPaths") {
        check_masked(&path, report);
    }
    for path in strings(spec, "/linux/readonlyPaths") {
        check_readonly(&path, &mounts, report);
    }
}

fn check_mount(m: &Value, mounts: &[MountInfo], report: &mut Report) {
    let dest = m["destination"].as_str().unwrap_or("");
    let check = format!("mounts[{dest}]");
    let Some(found) = mount_at(mounts, dest) else {
        report.fail(&check, "a mount", "none in /proc/self/mountinfo");
        return;
    };
    let options = strings(m, "/options");
    let typ = m["type"].as_str().unwrap_or("");
    let bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
    if !bind && !typ.is_empty() {
        // A cgroup mount is cgroup2 on a unified host, and on a cgroup v1 host a tmpfs
        // holding one mount per controller.
        let accepted: &[&str] = match typ {
            "cgroup" | "cgroup2" => &["cgroup", "cgroup2", "tmpfs"],
            other => &[other],
        };
        if accepted.contains(&found.fs_type.as_str()) {
            report.ok(&format!("{check}.type"));
        } else {
            report.fail(&format!("{check}.type"), typ, &found.fs_type);
        }
    }
    let mut flags_want = Vec::new();
    for option in &options {
        let flag = match option.as_str() {
            "ro" | "rw" | "nosuid" | "nodev" | "noexec" => option.as_str(),
            _ => continue,
        };
        flags_want.push(flag.to_string());
    }
    if !flags_want.is_empty() {
        // On a cgroup v1 host the cgroup mount is a tmpfs of one mount per controller, and
        // the flags are the controller mounts'.
        let carriers: Vec<&MountInfo> = if typ == "cgroup" && found.fs_type == "tmpfs" {
            let prefix = format!("{}/", found.mount_point);
            mounts
                .iter()
                .filter(|m| m.fs_type == "cgroup" && m.mount_point.starts_with(&prefix))
                .collect()
        } else {
            vec![found]
        };
        let wrong: Vec<&&MountInfo> = carriers
            .iter()
            .filter(|m| flags_want.iter().any(|f| !m.options.contains(f)))
            .collect();
        match wrong.first() {
            None => report.ok(&format!("{check}.flags")),
            Some(m) => report.fail(
                &format!("{check}.flags"),
                flags_want.join(","),
                format!("{} at {}", m.options.join(","), m.mount_point),
            ),
        }
    }
    if let Some(want) = options.iter().rev().find_map(|o| propagation_option(o)) {
        report.expect_eq(&format!("{check}.propagation"), want, propagation(found));
    }
    if found.fs_type == "tmpfs" && !bind {
        let opt = |name: &str| {
            options
                .iter()
                .rev()
                .find_map(|o| o.strip_prefix(name).map(str::to_string))
        };
        let sup = |name: &str| {
            found
                .super_options
                .iter()
                .find_map(|o| o.strip_prefix(name).map(str::to_string))
        };
        if let Some(size) = opt("size=").filter(|s| !s.ends_with('%')) {
            let got = sup("size=").and_then(|s| size_bytes(&s));
            report.expect_eq(&format!("{check}.size"), size_bytes(&size), got);
        }
        if let Some(mode) = opt("mode=") {
            let parse = |m: &str| u32::from_str_radix(m, 8).ok();
            report.expect_eq(
                &format!("{check}.mode"),
                parse(&mode),
                // tmpfs leaves its default mode, 1777, out of the options.
                sup("mode=").map_or(Some(0o1777), |m| parse(&m)),
            );
        }
    }
}

fn check_masked(path: &str, report: &mut Report) {
    let check = format!("linux.maskedPaths[{path}]");
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.skip(&check, "absent in this container");
            return;
        }
        Err(e) => {
            report.error(&check, format!("stat: {e}"));
            return;
        }
    };
    if meta.is_dir() {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                report.expect_eq(&check, Vec::<String>::new(), names);
            }
            Err(e) => report.error(&check, format!("read dir: {e}")),
        }
    } else {
        let mut buf = [0u8; 64];
        let got = std::fs::File::open(path).and_then(|mut f| {
            use std::io::Read;
            f.read(&mut buf)
        });
        match got {
            Ok(n) => report.expect_eq(&check, "0 bytes".to_string(), format!("{n} bytes")),
            // Masking with /dev/null's twin is the usual way; a file that cannot be opened
            // at all hides nothing either.
            Err(e) => report.fail(&check, "an empty read", format!("open/read: {e}")),
        }
    }
}

fn check_readonly(path: &str, mounts: &[MountInfo], report: &mut Report) {
    let check = format!("linux.readonlyPaths[{path}]");
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.skip(&check, "absent in this container");
            return;
        }
        Err(e) => {
            report.error(&check, format!("stat: {e}"));
            return;
        }
    };
    if meta.is_dir() {
        // procfs refuses to create files anyway: the read-only mount is what counts.
        match mount_at(mounts, path) {
            Some(m) if m.options.iter().any(|o| o == "ro") => report.ok(&check),
            Some(m) => report.fail(&check, "a read-only mount", m.options.join(",")),
            None => report.fail(&check, "a read-only mount", "no mount there"),
        }
        return;
    }
    let c = sys::cstring(path);
    // SAFETY: open(2) of a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
        report.fail(&check, "open for writing to fail with EROFS", "success");
    } else {
        report.expect_eq(
            &check,
            sys::errno_name(libc::EROFS),
            sys::errno_name(sys::errno()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_pages() {
        assert_eq!(size_bytes("65536k"), Some(65536 * 1024));
        assert_eq!(size_bytes("64m"), Some(64 << 20));
        assert_eq!(size_bytes("1000"), Some(4096));
        assert_eq!(size_bytes("5x"), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
