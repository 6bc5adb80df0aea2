//! Section 6: runv-vmm against `qemu -M microvm` to the first kernel console line, on the same
//! kernel: the `vmm` bench's kernel section, run as its own process and folded in here.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::report::Report;
use crate::stats::Summary;
use crate::Options;

const SECTION: &str = "6 VMM to first kernel line";

/// The `vmm` bench binary, built beside this one.
fn vmm_bench() -> Result<PathBuf> {
    let me = std::env::current_exe().context("find the bench binary")?;
    let bin = me.with_file_name("vmm");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p runv-benches`",
            bin.display()
        );
    }
    Ok(bin)
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    let bin = vmm_bench()?;
    let out = Command::new(&bin)
        .args(["--only", "kernel", "--runs", &o.runs.to_string()])
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = PathBuf::from("target/bench/vmm.json");
    let json: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))?;
    for row in json["results"].as_array().into_iter().flatten() {
        let unit = if row.get("median_ms").is_some() {
            "ms"
        } else {
            continue;
        };
        let get = |k: &str| row[format!("{k}_{unit}")].as_f64();
        let (Some(min), Some(median), Some(max)) = (get("min"), get("median"), get("max")) else {
            continue;
        };
        let runs = row["runs"]
            .as_u64()
            .and_then(|r| usize::try_from(r).ok())
            .unwrap_or(0);
        report.summary_row(
            SECTION,
            row["figure"].as_str().unwrap_or("?").to_string(),
            row["monitor"].as_str().unwrap_or("?").to_string(),
            "ms",
            Summary {
                min,
                median,
                max,
                runs,
            },
        );
    }
    for note in json["notes"].as_array().into_iter().flatten() {
        if let Some(text) = note["note"].as_str() {
            report.note(SECTION, text.to_string());
        }
    }
    Ok(())
}
