//! `runv run --rm -- true`, repeated: wall time and the time of every phase, min/median/max.
//!
//! Usage: startup [RUNS] (default 5). Needs root and an installed runv (or RUNV_BIN).
//! Prints a markdown table; writes target/bench/startup.json.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct SandboxTimings {
    prepared: Option<Duration>,
    hypervisor_started: Option<Duration>,
    kernel_started: Option<Duration>,
    agent_ready: Option<Duration>,
    sandbox_ready: Option<Duration>,
}

#[derive(Debug, Deserialize)]
struct RunTimings {
    sandbox: SandboxTimings,
    container_created: Option<Duration>,
    container_started: Option<Duration>,
    container_exited: Option<Duration>,
    teardown_done: Option<Duration>,
}

/// Phase name and its (start, end) marks.
fn phases(t: &RunTimings) -> Vec<(&'static str, Option<Duration>, Option<Duration>)> {
    let zero = Some(Duration::ZERO);
    vec![
        (
            "runtime prepare (checks, state dir)",
            zero,
            t.sandbox.prepared,
        ),
        (
            "hypervisor spawn (daemons + VMM)",
            t.sandbox.prepared,
            t.sandbox.hypervisor_started,
        ),
        (
            "VMM start to kernel entry",
            t.sandbox.hypervisor_started,
            t.sandbox.kernel_started,
        ),
        (
            "kernel boot to agent ready",
            t.sandbox.kernel_started,
            t.sandbox.agent_ready,
        ),
        (
            "sandbox setup (shared fs mount)",
            t.sandbox.agent_ready,
            t.sandbox.sandbox_ready,
        ),
        (
            "container create",
            t.sandbox.sandbox_ready,
            t.container_created,
        ),
        ("container start", t.container_created, t.container_started),
        (
            "container run to exit",
            t.container_started,
            t.container_exited,
        ),
        ("teardown", t.container_exited, t.teardown_done),
    ]
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    (values[0], median, values[values.len() - 1])
}

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let runv = std::env::var_os("RUNV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/local/bin/runv".into());
    let out_dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<&'static str> = Vec::new();
    let mut wall = Vec::new();
    for i in 0..runs {
        let timings_file = out_dir.join(format!("startup-{i}.json"));
        let start = Instant::now();
        let out = Command::new(&runv)
            .args(["run", "--rm", "--timings"])
            .arg(&timings_file)
            .args(["--", "true"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", runv.display()))?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            bail!("runv run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        wall.push(elapsed.as_secs_f64() * 1000.0);
        let t: RunTimings = serde_json::from_slice(&std::fs::read(&timings_file)?)?;
        std::fs::remove_file(&timings_file)?;
        for (name, from, to) in phases(&t) {
            if let (Some(from), Some(to)) = (from, to) {
                if !order.contains(&name) {
                    order.push(name);
                }
                samples
                    .entry(name)
                    .or_default()
                    .push(to.saturating_sub(from).as_secs_f64() * 1000.0);
            }
        }
    }
    println!("## `runv run --rm -- true`, {runs} runs (ms)\n");
    println!("| phase | min | median | max |\n| --- | ---: | ---: | ---: |");
    let mut report = serde_json::Map::new();
    let mut medians = BTreeMap::new();
    for name in &order {
        let (min, med, max) = stats(samples.get_mut(name).expect("sampled"));
        medians.insert(*name, med);
        println!("| {name} | {min:.1} | {med:.1} | {max:.1} |");
        report.insert(
            name.to_string(),
            serde_json::json!({"min_ms": min, "median_ms": med, "max_ms": max}),
        );
    }
    let (min, med, max) = stats(&mut wall);
    println!("| **wall time** | {min:.1} | {med:.1} | {max:.1} |");
    report.insert(
        "wall".into(),
        serde_json::json!({"min_ms": min, "median_ms": med, "max_ms": max}),
    );
    // The guest's own time: booting its kernel and running the command. The rest is runv's.
    let guest: f64 = [
        "VMM start to kernel entry",
        "kernel boot to agent ready",
        "container run to exit",
    ]
    .iter()
    .filter_map(|n| medians.get(n))
    .sum();
    let own = (med - guest).max(0.0);
    println!(
        "\nruntime's own share of the median run: {own:.1} ms of {med:.1} ms ({:.1}%); guest boot and run: {guest:.1} ms",
        own / med * 100.0
    );
    report.insert("runtime_own_ms".into(), serde_json::json!(own));
    std::fs::write(
        out_dir.join("startup.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}
