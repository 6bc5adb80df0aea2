//! Running peers and reading processes' memory.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Standard output of `bin ARGS...`, which must succeed.
pub fn output_of(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and returns its output and wall time; a non-zero exit is an error naming
/// `what`.
pub fn timed(what: &str, cmd: &mut Command) -> Result<(Output, Duration)> {
    cmd.stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("start {what}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((out, elapsed))
}

/// Whether `name` is an executable on PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// A process's proportional set size, KiB (`/proc/PID/smaps_rollup`).
pub fn pss_kib(pid: i32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read smaps_rollup of {pid}"))?;
    field_kib(&text, "Pss:").with_context(|| format!("no Pss in smaps_rollup of {pid}"))
}

/// The first `key value kB` line's value.
pub fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The memory of the largest shared-memory (`memfd:`) mapping of `pid`, which is the guest
/// RAM of a hypervisor with a memfd memory backend: (size, rss, pss), KiB.
pub fn guest_ram_kib(pid: i32) -> Result<Option<(u64, u64, u64)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("read smaps of {pid}"))?;
    Ok(mappings(&text)
        .filter(|m| m.name.starts_with("/memfd:"))
        .map(|m| (m.size, m.rss, m.pss))
        .max_by_key(|m| m.0))
}

/// One mapping of /proc/PID/smaps.
struct Mapping<'a> {
    name: &'a str,
    size: u64,
    rss: u64,
    pss: u64,
}

fn mappings(smaps: &str) -> impl Iterator<Item = Mapping<'_>> {
    let mut out = Vec::new();
    let mut lines = smaps.lines().peekable();
    while let Some(header) = lines.next() {
        // A header: "start-end perms offset dev inode [name]".
        let name = header.split_whitespace().nth(5).unwrap_or("");
        let mut m = Mapping {
            name,
            size: 0,
            rss: 0,
            pss: 0,
        };
        while let Some(line) = lines.peek() {
            let Some((key, rest)) = line.split_once(':') else {
                break;
            };
            if key.contains(' ') || key.contains('-') {
                break;
            }
            let kib = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match key {
                "Size" => m.size = kib,
                "Rss" => m.rss = kib,
                "Pss" => m.pss = kib,
                _ => {}
            }
            lines.next();
        }
        out.push(m);
    }
    out.into_iter()
}

/// CPU time (user + system) `pid` has used so far, seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read stat of {pid}"))?;
    // The fields after the command name (which may hold spaces) in parentheses; utime and
    // stime are the 14th and 15th of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("parse stat of {pid}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .with_context(|| format!("short stat of {pid}"))?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf() with a valid name only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Tick counts of a process stay far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let secs = ticks as f64 / per_second.max(1) as f64;
    Ok(secs)
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0010000000 rw-s 00000000 00:01 1234 /memfd:memory-backend-memfd (deleted)
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               40960 kB
Pss:               40000 kB
VmFlags: rd wr sh mr mw me ms sd
7f0020000000-7f0020001000 rw-s 00000000 00:01 99 /memfd:small (deleted)
Size:                  4 kB
Rss:                   4 kB
Pss:                   4 kB
55d000000000-55d000100000 r-xp 00000000 08:01 42 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 900 kB
Pss:                 300 kB
";

    #[test]
    fn guest_ram_is_the_largest_memfd_mapping() {
        let found = mappings(SMAPS)
            .filter(|m| m.name.starts_with("/memfd:"))
            .map(|m| (m.size, m.rss, m.pss))
            .max_by_key(|m| m.0);
        assert_eq!(found, Some((262144, 40960, 40000)));
        assert_eq!(mappings(SMAPS).count(), 3);
    }

    #[test]
    fn rollup_fields() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss: 5000 kB\nPss: 1234 kB\n";
        assert_eq!(field_kib(text, "Pss:"), Some(1234));
        assert_eq!(field_kib(text, "Swap:"), None);
    }
}
