//! `make bench`: runv measured against its peers, every figure from the same run.
//!
//! Sections (each figure min/median/max over repeated runs):
//! 1. `startup`: cold start of a sandbox to the container's first instruction, phase by phase,
//!    for each backend this host can run (`runv run --rm -- true`);
//! 2. `ctr`: `ctr run --rm IMG true` with runv, runc and crun through the same containerd;
//! 3. `agent`: container create+start by runv-agent against runc and crun, all three natively
//!    on this host from the same root and spec (the agent in its development mode), so the
//!    comparison is not skewed by a guest under emulation;
//! 4. `memory`: host memory of one idle sandbox (PSS of each of its processes) and guest RAM
//!    touched against configured, with runc's shim for scale;
//! 5. `density`: N sandboxes started at once: time until all run, p50/p99 per sandbox, and a
//!    check that all are gone afterwards;
//! 6. `vmm`: runv-vmm against `qemu -M microvm` to the first kernel console line (the `vmm`
//!    bench's kernel section);
//! 7. `network`: TCP round trips and throughput between a container on a CNI bridge and the
//!    bridge's host side, runv against runc.
//!
//! Usage: bench [--runs N] [--density N[,N...]] [--only SECTION]...
//! Environment: RUNV_BIN, RUNV_SHIM (binaries under test, default the installed ones),
//! RUNV_AGENT (default target/x86_64-unknown-linux-musl/release/runv-agent), RUNV_CONFIG.
//! Prints a markdown table; writes target/bench/report.json.

#[path = "../vmm/report.rs"]
mod report;
#[path = "../vmm/stats.rs"]
mod stats;

mod agent;
mod ctr;
mod density;
mod memory;
mod network;
mod procs;
mod startup;
mod vmm;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use report::Report;

/// A section of the report.
type Section = fn(&Options, &mut Report) -> Result<()>;

const SECTIONS: [&str; 7] = [
    "startup", "ctr", "agent", "memory", "density", "vmm", "network",
];

/// Command-line options.
pub struct Options {
    pub runs: usize,
    pub density: Vec<usize>,
    pub only: Vec<String>,
    pub runv: PathBuf,
}

impl Options {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        runs: 5,
        density: vec![10, 50],
        only: Vec::new(),
        runv: std::env::var_os("RUNV_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/local/bin/runv".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = value()?.parse().context("--runs")?,
            "--density" => {
                o.density = value()?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--density takes counts like 10,50")?;
                if o.density.contains(&0) {
                    bail!("--density counts must be at least 1");
                }
            }
            "--only" => {
                let v = value()?;
                if !SECTIONS.contains(&v.as_str()) {
                    bail!("--only takes one of {SECTIONS:?}, not {v:?}");
                }
                o.only.push(v);
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--runs N] [--density N[,N...]] [--only {}]...",
                    SECTIONS.join("|")
                );
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?}"),
        }
    }
    if o.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !o.runv.exists() {
        bail!(
            "{} does not exist: run `make install` or set RUNV_BIN",
            o.runv.display()
        );
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let mut report = Report::with_subject_label("subject");
    report.extra(
        "setup",
        serde_json::json!({
            "runs": o.runs,
            "density": o.density,
            "runv": o.runv,
            "host_cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "check": procs::output_of(&o.runv, &["check"]).unwrap_or_default(),
        }),
    );
    // A section that cannot run on this host says why in a note; an error in one section
    // is reported and the others still run, then the bench fails.
    let mut failed = Vec::new();
    let sections: [(&str, Section); 7] = [
        ("startup", startup::run),
        ("ctr", ctr::run),
        ("agent", agent::run),
        ("memory", memory::run),
        ("density", density::run),
        ("vmm", vmm::run),
        ("network", network::run),
    ];
    for (name, section) in sections {
        if !o.wants(name) {
            continue;
        }
        eprintln!("bench: {name} ...");
        // The end-to-end harness the sections share panics on a failure of its own.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| section(&o, &mut report)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("bench: {name} failed: {e:#}");
                failed.push(name);
            }
            Err(_) => {
                eprintln!("bench: {name} failed (see the panic above)");
                failed.push(name);
            }
        }
    }
    let out_dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    println!("## runv against its peers, {} runs per figure\n", o.runs);
    print!("{}", report.markdown());
    println!("\nJSON: {}", path.display());
    if !failed.is_empty() {
        bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
