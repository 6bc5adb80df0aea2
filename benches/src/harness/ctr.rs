//! Section 2: `ctr run --rm IMG ID true` wall time with runv, runc and crun, through the same
//! containerd (one of the bench's own, as the end-to-end tests start it) on the same image.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use runv_tests::containerd::{Containerd, BUSYBOX_IMAGE, RUNV_RUNTIME};

use crate::procs::on_path;
use crate::report::Report;
use crate::startup::{GUEST_PHASES, QEMU_PHASE_MEDIANS};
use crate::stats::Summary;
use crate::Options;

const SECTION: &str = "2 ctr run --rm true";
const LIMIT: Duration = Duration::from_secs(120);

/// The runtimes compared and the `ctr run` options that select them.
fn subjects() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut s = vec![
        ("runv", vec!["--runtime", RUNV_RUNTIME]),
        ("runc", vec!["--runtime", "io.containerd.runc.v2"]),
    ];
    if on_path("crun") {
        s.push((
            "crun",
            vec![
                "--runtime",
                "io.containerd.runc.v2",
                "--runc-binary",
                "crun",
            ],
        ));
    }
    s
}

fn run_one(containerd: &Containerd, options: &[&str], id: &str) -> Result<f64> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(options);
    args.extend_from_slice(&[BUSYBOX_IMAGE, id, "true"]);
    let start = Instant::now();
    let out = containerd.ctr(&args, LIMIT);
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "ctr {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(elapsed.as_secs_f64() * 1000.0)
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    let containerd = Containerd::start();
    containerd.import_busybox();
    let mut subjects = subjects();
    if !subjects.iter().any(|(name, _)| *name == "crun") {
        report.note(
            SECTION,
            "crun: not installed (scripts/install-deps.sh installs it)",
        );
    }
    // One unmeasured run each (the image's snapshot is made then); a peer that cannot run
    // here (crun refuses a cgroup v1/v2 hybrid host) is left out with the reason. Then the
    // runtimes take turns, so a slow moment of the host falls on all of them alike.
    let mut warm = Vec::new();
    for (name, options) in subjects.drain(..) {
        match run_one(&containerd, &options, &format!("bench-warm-{name}")) {
            Ok(_) => warm.push((name, options)),
            Err(e) if name != "runv" => {
                report.note(SECTION, format!("{name}: not measured on this host: {e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
    let subjects = warm;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    for run in 0..o.runs {
        for (i, (name, options)) in subjects.iter().enumerate() {
            samples[i].push(run_one(
                &containerd,
                options,
                &format!("bench-{name}-{run}"),
            )?);
        }
    }
    for (i, (name, _)) in subjects.iter().enumerate() {
        report.row(SECTION, "wall time", *name, "ms", &samples[i]);
    }
    let median = |i: usize| Summary::of(&samples[i]).map(|s| s.median);
    let (Some(runv), Some(runc)) = (median(0), median(1)) else {
        return Ok(());
    };
    let guest: Option<f64> = QEMU_PHASE_MEDIANS.lock().ok().and_then(|m| {
        let sum: Option<Vec<f64>> = GUEST_PHASES.iter().map(|p| m.get(p).copied()).collect();
        sum.map(|v| v.iter().sum())
    });
    let mut derived = serde_json::json!({"runv_over_runc": runv / runc});
    let mut text = format!("runv/runc median ratio {:.2}", runv / runc);
    if let Some(guest) = guest {
        let overhead = (runv - guest).max(0.0);
        derived["runv_minus_guest_boot_ms"] = serde_json::json!(overhead);
        derived["runv_minus_guest_boot_over_runc"] = serde_json::json!(overhead / runc);
        text.push_str(&format!(
            "; with the guest's boot and run (section 1's median, {guest:.0} ms) subtracted, \
             runv takes {overhead:.0} ms: {:.2}× runc (target ≤ 2×)",
            overhead / runc
        ));
    }
    report.extra("ctr_run", derived);
    report.note(SECTION, text);
    Ok(())
}
