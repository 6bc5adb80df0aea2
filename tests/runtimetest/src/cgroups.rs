//! linux.resources limits, read back from the container's own cgroup (v2, or v1 where the
//! host has no unified hierarchy).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::at;
use crate::mounts::{mountinfo, MountInfo};
use crate::report::Report;

/// cgroup v1's "unlimited" for memory: the largest page-aligned i64.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;
const PAGE: u64 = 4096;

/// The container's cgroup directory in the hierarchy mounted at `mount` whose path in
/// /proc/self/cgroup is `path`: the one whose cgroup.procs lists this process.
fn own_dir(mount: &Path, path: &str) -> Option<PathBuf> {
    let pid = std::process::id().to_string();
    let relative = path.trim_start_matches('/');
    [mount.join(relative), mount.to_path_buf()]
        .into_iter()
        .find(|dir| {
            ["cgroup.procs", "tasks"].iter().any(|f| {
                std::fs::read_to_string(dir.join(f))
                    .is_ok_and(|procs| procs.lines().any(|l| l.trim() == pid))
            })
        })
}

/// Where the limits of this container are: a cgroup v2 directory, or v1 directories by
/// controller.
enum Cgroup {
    V2(PathBuf),
    V1(Vec<(String, PathBuf)>),
}

impl Cgroup {
    fn find(mounts: &[MountInfo]) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let lines: Vec<(String, String)> = own
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        let v1: Vec<(String, PathBuf)> = lines
            .iter()
            .filter(|(controllers, _)| !controllers.is_empty())
            .flat_map(|(controllers, path)| {
                let mount = mounts.iter().find(|m| {
                    m.fs_type == "cgroup"
                        && controllers
                            .split(',')
                            .all(|c| m.super_options.iter().any(|o| o == c))
                });
                let dir = mount.and_then(|m| own_dir(Path::new(&m.mount_point), path));
                controllers
                    .split(',')
                    .filter_map(move |c| dir.clone().map(|d| (c.to_string(), d)))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !v1.is_empty() {
            return Some(Cgroup::V1(v1));
        }
        let path = lines
            .iter()
            .find(|(controllers, _)| controllers.is_empty())
            .map(|(_, p)| p.clone())?;
        let mount = mounts.iter().rev().find(|m| m.fs_type == "cgroup2")?;
        own_dir(Path::new(&mount.mount_point), &path).map(Cgroup::V2)
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        match self {
            Cgroup::V1(dirs) => dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path()),
            Cgroup::V2(_) => None,
        }
    }
}

/// Reads a cgroup file; reports an error for `check` when it cannot.
fn read(dir: &Path, file: &str, check: &str, report: &mut Report) -> Option<String> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(v) => Some(v.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.skip(check, format!("{} does not exist here", path.display()));
            None
        }
        Err(e) => {
            report.error(check, format!("read {}: {e}", path.display()));
            None
        }
    }
}

/// Compares the content of a cgroup file with what the spec implies.
fn expect_file(dir: &Path, file: &str, want: String, report: &mut Report) {
    let check = format!("linux.resources: {file}");
    if let Some(got) = read(dir, file, &check, report) {
        report.expect_eq(&check, want, got);
    }
}

/// A memory value as the kernel stores it: page-aligned, or `max` (v2).
fn v2_bytes(v: i64) -> String {
    match u64::try_from(v) {
        Ok(v) => (v / PAGE * PAGE).to_string(),
        Err(_) => "max".into(),
    }
}

fn v1_bytes(v: i64) -> String {
    match u64::try_from(v) {
        Ok(v) => (v / PAGE * PAGE).to_string(),
        Err(_) => V1_UNLIMITED.to_string(),
    }
}

/// A cpu list (`0-2,4`) as a set.
fn cpu_list(s: &str) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    set.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    set.insert(n);
                }
            }
        }
    }
    set
}

pub fn check(spec: &Value, report: &mut Report) {
    let Some(resources) = at(spec, "/linux/resources") else {
        return;
    };
    let asks = ["memory", "pids", "cpu", "blockIO", "hugepageLimits"]
        .iter()
        .any(|k| !resources[*k].is_null());
    if !asks {
        return;
    }
    let mounts = mountinfo();
    match Cgroup::find(&mounts) {
        Some(Cgroup::V2(dir)) => check_v2(resources, &dir, report),
        Some(cgroup @ Cgroup::V1(_)) => check_v1(resources, &cgroup, report),
        None => report.error(
            "linux.resources",
            "the container's own cgroup is not visible under /sys/fs/cgroup",
        ),
    }
}

fn check_v2(r: &Value, dir: &Path, report: &mut Report) {
    let mem = &r["memory"];
    if let Some(limit) = mem["limit"].as_i64() {
        expect_file(dir, "memory.max", v2_bytes(limit), report);
    }
    if let Some(low) = mem["reservation"].as_i64() {
        expect_file(dir, "memory.low", v2_bytes(low), report);
    }
    if let Some(swap) = mem["swap"].as_i64() {
        let limit = mem["limit"].as_i64().unwrap_or(-1);
        let want = if swap < 0 || limit < 0 {
            "max".to_string()
        } else {
            v2_bytes(swap.saturating_sub(limit))
        };
        expect_file(dir, "memory.swap.max", want, report);
    }
    if let Some(limit) = r["pids"]["limit"].as_i64() {
        let want = if limit > 0 {
            limit.to_string()
        } else {
            "max".into()
        };
        expect_file(dir, "pids.max", want, report);
    }
    let cpu = &r["cpu"];
    if !cpu["quota"].is_null() || !cpu["period"].is_null() {
        let period = cpu["period"].as_u64().filter(|p| *p > 0).unwrap_or(100_000);
        let quota = match cpu["quota"].as_i64() {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".into(),
        };
        expect_file(dir, "cpu.max", format!("{quota} {period}"), report);
    }
    if let Some(shares) = cpu["shares"].as_u64().filter(|s| *s > 0) {
        let shares = shares.clamp(2, 262_144);
        let weight = 1 + ((shares - 2) * 9999) / 262_142;
        expect_file(dir, "cpu.weight", weight.to_string(), report);
    }
    if let Some(cpus) = cpu["cpus"].as_str().filter(|c| !c.is_empty()) {
        let check = "linux.resources: cpuset.cpus";
        if let Some(got) = read(dir, "cpuset.cpus", check, report) {
            report.expect_eq(check, cpu_list(cpus), cpu_list(&got));
        }
    }
    if let Some(mems) = cpu["mems"].as_str().filter(|c| !c.is_empty()) {
        let check = "linux.resources: cpuset.mems";
        if let Some(got) = read(dir, "cpuset.mems", check, report) {
            report.expect_eq(check, cpu_list(mems), cpu_list(&got));
        }
    }
    if let Some(weight) = r["blockIO"]["weight"].as_u64() {
        // With BFQ the weight goes to io.bfq.weight as is; otherwise to io.weight, mapped
        // from blkio's 10..=1000 onto 1..=10000.
        if dir.join("io.bfq.weight").exists() {
            let check = "linux.resources: io.bfq.weight";
            if let Some(got) = read(dir, "io.bfq.weight", check, report) {
                report.expect_eq(check, Some(weight.to_string()), default_weight(&got));
            }
        } else {
            let check = "linux.resources: io.weight";
            let want = 1 + (weight.clamp(10, 1000) - 10) * 9999 / 990;
            if let Some(got) = read(dir, "io.weight", check, report) {
                report.expect_eq(check, Some(want.to_string()), default_weight(&got));
            }
        }
    }
    for limit in r["hugepageLimits"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let size = limit["pageSize"].as_str().unwrap_or("");
        if let Some(bytes) = limit["limit"].as_u64() {
            expect_file(
                dir,
                &format!("hugetlb.{size}.max"),
                bytes.to_string(),
                report,
            );
        }
    }
}

/// The `default N` line of a weight file.
fn default_weight(content: &str) -> Option<String> {
    content
        .lines()
        .find_map(|l| l.strip_prefix("default ").map(|w| w.trim().to_string()))
}

fn check_v1(r: &Value, cgroup: &Cgroup, report: &mut Report) {
    let mem = &r["memory"];
    let limit = mem["limit"].as_i64();
    if let Some(dir) = cgroup.v1_dir("memory") {
        if let Some(limit) = limit {
            expect_file(dir, "memory.limit_in_bytes", v1_bytes(limit), report);
        }
        if let Some(low) = mem["reservation"].as_i64() {
            expect_file(dir, "memory.soft_limit_in_bytes", v1_bytes(low), report);
        }
        if let Some(swap) = mem["swap"].as_i64() {
            expect_file(dir, "memory.memsw.limit_in_bytes", v1_bytes(swap), report);
        }
    } else if !mem.is_null() {
        report.skip("linux.resources.memory", "no memory controller here");
    }
    if let (Some(limit), Some(dir)) = (r["pids"]["limit"].as_i64(), cgroup.v1_dir("pids")) {
        let want = if limit > 0 {
            limit.to_string()
        } else {
            "max".into()
        };
        expect_file(dir, "pids.max", want, report);
    }
    let cpu = &r["cpu"];
    if let Some(dir) = cgroup.v1_dir("cpu") {
        if let Some(quota) = cpu["quota"].as_i64() {
            expect_file(dir, "cpu.cfs_quota_us", quota.max(-1).to_string(), report);
        }
        if let Some(period) = cpu["period"].as_u64() {
            expect_file(dir, "cpu.cfs_period_us", period.to_string(), report);
        }
        if let Some(shares) = cpu["shares"].as_u64().filter(|s| *s > 0) {
            expect_file(dir, "cpu.shares", shares.to_string(), report);
        }
    }
    if let Some(dir) = cgroup.v1_dir("cpuset") {
        if let Some(cpus) = cpu["cpus"].as_str().filter(|c| !c.is_empty()) {
            let check = "linux.resources: cpuset.cpus";
            if let Some(got) = read(dir, "cpuset.cpus", check, report) {
                report.expect_eq(check, cpu_list(cpus), cpu_list(&got));
            }
        }
    }
    if let (Some(weight), Some(dir)) = (r["blockIO"]["weight"].as_u64(), cgroup.v1_dir("blkio")) {
        expect_file(dir, "blkio.weight", weight.to_string(), report);
    }
    if let Some(dir) = cgroup.v1_dir("hugetlb") {
        for limit in r["hugepageLimits"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let size = limit["pageSize"].as_str().unwrap_or("");
            if let Some(bytes) = limit["limit"].as_u64() {
                expect_file(
                    dir,
                    &format!("hugetlb.{size}.limit_in_bytes"),
                    bytes.to_string(),
                    report,
                );
            }
        }
    }
}
