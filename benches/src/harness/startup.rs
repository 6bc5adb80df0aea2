//! Section 1: cold start of a sandbox to the container's first instruction, phase by phase,
//! from `runv run --rm --timings FILE -- true`, for each backend this host can run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::procs::timed;
use crate::report::Report;
use crate::Options;

const SECTION: &str = "1 cold start";

#[derive(Debug, Deserialize)]
pub struct SandboxTimings {
    pub prepared: Option<Duration>,
    pub hypervisor_started: Option<Duration>,
    pub kernel_started: Option<Duration>,
    pub agent_ready: Option<Duration>,
    pub sandbox_ready: Option<Duration>,
}

/// What `runv run --timings` writes: marks since the start of the run.
#[derive(Debug, Deserialize)]
pub struct RunTimings {
    pub sandbox: SandboxTimings,
    pub container_created: Option<Duration>,
    pub container_started: Option<Duration>,
    pub container_exited: Option<Duration>,
    pub teardown_done: Option<Duration>,
}

/// Phases whose time is the guest's (booting its kernel, running the command) rather than
/// the runtime's.
pub const GUEST_PHASES: [&str; 3] = [
    "VMM start → kernel entry",
    "kernel entry → agent ready",
    "container start → exit",
];

/// Median phase times (ms) of the QEMU backend, for the sections that subtract the guest's
/// boot from a figure.
pub static QEMU_PHASE_MEDIANS: Mutex<BTreeMap<&'static str, f64>> = Mutex::new(BTreeMap::new());

/// Phase name and its (start, end) marks.
fn phases(t: &RunTimings) -> [(&'static str, Option<Duration>, Option<Duration>); 9] {
    let s = &t.sandbox;
    [
        ("runtime prepare", Some(Duration::ZERO), s.prepared),
        ("hypervisor spawn", s.prepared, s.hypervisor_started),
        (GUEST_PHASES[0], s.hypervisor_started, s.kernel_started),
        (GUEST_PHASES[1], s.kernel_started, s.agent_ready),
        ("sandbox setup", s.agent_ready, s.sandbox_ready),
        ("container create", s.sandbox_ready, t.container_created),
        ("container start", t.container_created, t.container_started),
        (GUEST_PHASES[2], t.container_started, t.container_exited),
        ("teardown", t.container_exited, t.teardown_done),
    ]
}

/// One `runv run --rm --hypervisor BACKEND --timings FILE -- true`: its wall time and marks.
pub fn run_once(runv: &Path, backend: &str, timings: &Path) -> Result<(Duration, RunTimings)> {
    let (_, wall) = timed(
        &format!("runv run --hypervisor {backend}"),
        Command::new(runv)
            .args(["run", "--rm", "--hypervisor", backend, "--timings"])
            .arg(timings)
            .args(["--", "true"]),
    )?;
    let t: RunTimings = serde_json::from_slice(
        &std::fs::read(timings).with_context(|| format!("read {}", timings.display()))?,
    )
    .context("parse the timings")?;
    std::fs::remove_file(timings)?;
    Ok((wall, t))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let timings = dir.path().join("timings.json");
    for (backend, subject) in [("qemu", "runv, QEMU"), ("builtin", "runv, runv-vmm")] {
        // One unmeasured run: it warms the page cache, and a backend this host cannot run
        // fails it at once, which the report says instead of a figure.
        if let Err(e) = run_once(&o.runv, backend, &timings) {
            report.note(
                SECTION,
                format!("{subject}: not measured on this host: {e:#}"),
            );
            continue;
        }
        let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        let mut order = Vec::new();
        let mut wall = Vec::new();
        let mut to_first_instruction = Vec::new();
        for _ in 0..o.runs {
            let (elapsed, t) = run_once(&o.runv, backend, &timings)?;
            wall.push(ms(elapsed));
            if let Some(started) = t.container_started {
                to_first_instruction.push(ms(started));
            }
            for (name, from, to) in phases(&t) {
                if let (Some(from), Some(to)) = (from, to) {
                    if !order.contains(&name) {
                        order.push(name);
                    }
                    samples
                        .entry(name)
                        .or_default()
                        .push(ms(to.saturating_sub(from)));
                }
            }
        }
        for name in &order {
            report.row(SECTION, *name, subject, "ms", &samples[name]);
        }
        report.row(
            SECTION,
            "start → container's first instruction",
            subject,
            "ms",
            &to_first_instruction,
        );
        report.row(
            SECTION,
            "wall time of `runv run --rm true`",
            subject,
            "ms",
            &wall,
        );
        let median = |v: &[f64]| crate::stats::Summary::of(v).map(|s| s.median);
        let medians: BTreeMap<&'static str, f64> = order
            .iter()
            .filter_map(|n| Some((*n, median(&samples[n])?)))
            .collect();
        if let Some(wall_median) = median(&wall) {
            let guest: f64 = GUEST_PHASES.iter().filter_map(|n| medians.get(n)).sum();
            let own = (wall_median - guest).max(0.0);
            report.extra(
                &format!("runtime_own_share_{backend}"),
                serde_json::json!({
                    "own_ms": own,
                    "wall_median_ms": wall_median,
                    "share": own / wall_median,
                    "target_share": 0.10,
                }),
            );
            report.note(
                SECTION,
                format!(
                    "{subject}: the runtime's own time (all but the guest booting and running) is \
                     {own:.0} ms of the median {wall_median:.0} ms ({:.1}%; target ≤ 10%)",
                    own / wall_median * 100.0
                ),
            );
        }
        if backend == "qemu" {
            if let Ok(mut shared) = QEMU_PHASE_MEDIANS.lock() {
                *shared = medians;
            }
        }
    }
    Ok(())
}
