//! Resource use of a container, read from its cgroup v2 files.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use runv_agent_protocol::agent as pb;

/// Reads `file` under `dir`; a missing file (a controller the kernel lacks) is empty.
fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// A flat-keyed file ("key value" per line), as memory.stat, cpu.stat, memory.events.
pub fn flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let key = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((key.to_string(), value))
        })
        .collect()
}

/// A single value file; "max" (no limit) and a missing file are 0.
pub fn single(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ..." per device.
pub fn io_stat(text: &str) -> Vec<pb::IoStats> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut entry = pb::IoStats {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                let value = value.parse().unwrap_or(0);
                match key {
                    "rbytes" => entry.rbytes = value,
                    "wbytes" => entry.wbytes = value,
                    "rios" => entry.rios = value,
                    "wios" => entry.wios = value,
                    _ => {}
                }
            }
            Some(entry)
        })
        .collect()
}

/// Everything StatsContainer reports, from the cgroup directory `dir`.
pub fn read_stats(dir: &Path) -> pb::StatsContainerResponse {
    let cpu = flat_keyed(&read(dir, "cpu.stat"));
    let get = |map: &HashMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
    let cpu = pb::CpuStats {
        usage_usec: get(&cpu, "usage_usec"),
        user_usec: get(&cpu, "user_usec"),
        system_usec: get(&cpu, "system_usec"),
        nr_periods: get(&cpu, "nr_periods"),
        nr_throttled: get(&cpu, "nr_throttled"),
        throttled_usec: get(&cpu, "throttled_usec"),
        ..Default::default()
    };
    let events = flat_keyed(&read(dir, "memory.events"));
    let memory = pb::MemoryStats {
        usage: single(&read(dir, "memory.current")),
        limit: single(&read(dir, "memory.max")),
        swap_usage: single(&read(dir, "memory.swap.current")),
        swap_limit: single(&read(dir, "memory.swap.max")),
        stat: flat_keyed(&read(dir, "memory.stat")),
        oom: get(&events, "oom"),
        oom_kill: get(&events, "oom_kill"),
        ..Default::default()
    };
    let pids = pb::PidsStats {
        current: single(&read(dir, "pids.current")),
        limit: single(&read(dir, "pids.max")),
        ..Default::default()
    };
    pb::StatsContainerResponse {
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        pids: Some(pids).into(),
        io: io_stat(&read(dir, "io.stat")),
        ..Default::default()
    }
}

/// The OOM kill count of the cgroup at `dir`.
pub fn oom_kills(dir: &Path) -> u64 {
    flat_keyed(&read(dir, "memory.events"))
        .get("oom_kill")
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\n",
        );
        write("memory.current", "4096\n");
        write("memory.max", "max\n");
        write("memory.stat", "anon 1024\nfile 2048\nbad line\n");
        write("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n");
        write("pids.current", "3\n");
        write("pids.max", "10\n");
        write(
            "io.stat",
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        let stats = read_stats(dir.path());
        assert_eq!(stats.cpu.usage_usec, 1500);
        assert_eq!(stats.cpu.system_usec, 500);
        assert_eq!(stats.cpu.nr_periods, 4);
        assert_eq!(stats.memory.usage, 4096);
        assert_eq!(stats.memory.limit, 0);
        assert_eq!(stats.memory.stat.get("file"), Some(&2048));
        assert_eq!(stats.memory.stat.len(), 2);
        assert_eq!((stats.memory.oom, stats.memory.oom_kill), (2, 1));
        assert_eq!((stats.pids.current, stats.pids.limit), (3, 10));
        assert_eq!(stats.io.len(), 1);
        assert_eq!((stats.io[0].major, stats.io[0].minor), (254, 0));
        assert_eq!((stats.io[0].rbytes, stats.io[0].wios), (4096, 2));
        assert_eq!(oom_kills(dir.path()), 1);
    }

    #[test]
    fn missing_files_are_zero() {
        let dir = tempfile::tempdir().unwrap();
        let stats = read_stats(dir.path());
        assert_eq!(stats.memory.usage, 0);
        assert!(stats.io.is_empty());
        assert_eq!(oom_kills(dir.path()), 0);
    }
}
