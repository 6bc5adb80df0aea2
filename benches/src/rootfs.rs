//! The two ways a container root reaches the guest, measured in the same run: virtio-fs
//! (`[runtime] rootfs = "virtiofs"`) and a read-only erofs image on virtio-blk with an
//! overlay in the guest (`rootfs = "block"`).
//!
//! Usage: rootfs [RUNS] [FILES] (defaults 5 and 3000). Needs root and an installed runv (or
//! RUNV_BIN). The root is a copy of the installed busybox root plus FILES small files under
//! /data; both modes get it as `default_rootfs` through their own RUNV_CONFIG. Runs
//! alternate between the modes after one unmeasured run each (the block image is built
//! and cached there; the cold build is reported on its own).
//!
//! Figures, per mode, min/median/max over RUNS:
//! - start: wall time of `runv run --rm -- true`;
//! - file-heavy workload: the container's own run time (start to exit, from
//!   `runv run --timings`) of `find / -xdev` + reading every file of /data + `tar c /data`.
//!
//! Prints a markdown table with the ratio block/virtiofs of the medians; writes
//! target/bench/rootfs.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

const MODES: [&str; 2] = ["virtiofs", "block"];

const WORKLOAD: &str = "find / -xdev | wc -l >/dev/null && \
    find /data -type f -exec cat {} + >/dev/null && tar c /data >/dev/null";

#[derive(Debug, Deserialize)]
struct RunTimings {
    container_started: Option<Duration>,
    container_exited: Option<Duration>,
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (values[0], median, values[n - 1])
}

/// A copy of the installed busybox root with `files` files of 1-8 KiB under /data.
fn make_rootfs(dir: &Path, files: usize) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    let status = Command::new("cp")
        .args(["-a", "/usr/local/share/runv/rootfs/busybox"])
        .arg(&root)
        .status()
        .context("copy the busybox root")?;
    if !status.success() {
        bail!("cp -a of the busybox root failed");
    }
    for i in 0..files {
        let sub = root.join(format!("data/d{:02}", i % 50));
        std::fs::create_dir_all(&sub)?;
        let size = 1024 * (1 + i % 8);
        let byte = u8::try_from(i % 251).unwrap_or(0);
        std::fs::write(sub.join(format!("f{i}")), vec![byte; size])?;
    }
    Ok(root)
}

/// A runv config for `mode` with `root` as the default root, on top of RUNV_CONFIG if set.
fn write_config(dir: &Path, mode: &str, root: &Path) -> Result<PathBuf> {
    let base = match std::env::var_os("RUNV_CONFIG") {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("read {}", PathBuf::from(path).display()))?,
        None => String::new(),
    };
    if base.contains("[runtime]") {
        bail!("RUNV_CONFIG already has a [runtime] table; this bench sets its own");
    }
    let path = dir.join(format!("{mode}.toml"));
    std::fs::write(
        &path,
        format!(
            "{base}\n[runtime]\nrootfs = \"{mode}\"\ndefault_rootfs = \"{}\"\n",
            root.display()
        ),
    )?;
    Ok(path)
}

/// Runs `runv run --rm --timings ... -- args` under `config`; wall time and the timings.
fn run(runv: &Path, config: &Path, timings: &Path, args: &[&str]) -> Result<(f64, RunTimings)> {
    let start = Instant::now();
    let out = Command::new(runv)
        .env("RUNV_CONFIG", config)
        .args(["run", "--rm", "--timings"])
        .arg(timings)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", runv.display()))?;
    let wall = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "runv run {args:?} failed under {}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t: RunTimings = serde_json::from_slice(&std::fs::read(timings)?)?;
    std::fs::remove_file(timings)?;
    Ok((wall, t))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let files: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3000);
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let runv = std::env::var_os("RUNV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/local/bin/runv".into());
    let out_dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile_dir()?;
    let result = measure(&runv, &work, &out_dir, runs, files);
    std::fs::remove_dir_all(&work).ok();
    result
}

/// A fresh directory under /var/tmp (the block image cache keys on the root's path, so a
/// new path per run makes the cold build really cold).
fn tempfile_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/var/tmp/runv-bench-rootfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn measure(runv: &Path, work: &Path, out_dir: &Path, runs: usize, files: usize) -> Result<()> {
    let root = make_rootfs(work, files)?;
    let configs: Vec<PathBuf> = MODES
        .iter()
        .map(|mode| write_config(work, mode, &root))
        .collect::<Result<_>>()?;
    let timings = work.join("timings.json");
    // One unmeasured run per mode; the block one builds the image.
    let mut cold = Vec::new();
    for config in &configs {
        cold.push(run(runv, config, &timings, &["true"])?.0);
    }
    let mut start: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut workload: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (m, config) in configs.iter().enumerate() {
            start[m].push(run(runv, config, &timings, &["true"])?.0);
            let (_, t) = run(runv, config, &timings, &["sh", "-c", WORKLOAD])?;
            let (Some(from), Some(to)) = (t.container_started, t.container_exited) else {
                bail!("runv --timings gave no container start/exit marks");
            };
            workload[m].push(to.saturating_sub(from).as_secs_f64() * 1000.0);
        }
    }
    println!(
        "## container roots: virtiofs vs block, {runs} runs, {files} files under /data (ms)\n"
    );
    println!("| measure | mode | min | median | max |\n| --- | --- | ---: | ---: | ---: |");
    let mut report = serde_json::Map::new();
    for (name, samples) in [
        ("start (runv run --rm true)", &mut start),
        ("file-heavy workload", &mut workload),
    ] {
        let mut medians = [0.0; 2];
        for (m, mode) in MODES.iter().enumerate() {
            let (min, med, max) = stats(&mut samples[m]);
            medians[m] = med;
            println!("| {name} | {mode} | {min:.1} | {med:.1} | {max:.1} |");
            report.insert(
                format!("{name} / {mode}"),
                serde_json::json!({"min_ms": min, "median_ms": med, "max_ms": max}),
            );
        }
        let ratio = medians[1] / medians[0];
        println!("| {name} | **block / virtiofs** | | {ratio:.2} | |");
        report.insert(
            format!("{name} / ratio block/virtiofs"),
            serde_json::json!(ratio),
        );
    }
    println!(
        "\nfirst run (block builds its image): virtiofs {:.1} ms, block {:.1} ms",
        cold[0], cold[1]
    );
    report.insert(
        "first run".into(),
        serde_json::json!({"virtiofs_ms": cold[0], "block_ms": cold[1]}),
    );
    std::fs::write(
        out_dir.join("rootfs.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}
