//! runv-vmm against QEMU microvm on the same /dev/kvm, side by side in one run:
//! start to the payload's first instruction, start to the guest kernel's first console line,
//! memory overhead of the monitor process, and vsock throughput and latency through
//! runv-vmm's device.
//!
//! Usage: vmm [--runs N] [--memory-mib M] [--only payload|kernel|vsock]...
//! Environment: RUNV_VMM (default /usr/local/bin/runv-vmm), QEMU (default qemu-system-x86_64),
//! RUNV_GUEST_KERNEL (default /usr/local/share/runv/guest/vmlinux).
//! Prints a markdown table; writes target/bench/vmm.json.

mod boot;
mod child;
mod memory;
mod monitors;
mod payload;
mod report;
mod sections;
mod stats;
mod vsock;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use monitors::Setup;
use report::Report;

/// Command-line options.
pub struct Options {
    pub runs: usize,
    pub only: Vec<String>,
    pub setup: Setup,
    pub guest_kernel: PathBuf,
}

impl Options {
    pub fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        runs: 10,
        only: Vec::new(),
        setup: Setup {
            runv_vmm: env_path("RUNV_VMM", "/usr/local/bin/runv-vmm"),
            qemu: env_path("QEMU", "qemu-system-x86_64"),
            memory_mib: 128,
        },
        guest_kernel: env_path("RUNV_GUEST_KERNEL", "/usr/local/share/runv/guest/vmlinux"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = value()?.parse().context("--runs")?,
            "--memory-mib" => o.setup.memory_mib = value()?.parse().context("--memory-mib")?,
            "--only" => {
                let v = value()?;
                if !["payload", "kernel", "vsock"].contains(&v.as_str()) {
                    bail!("--only takes payload, kernel or vsock, not {v:?}");
                }
                o.only.push(v);
            }
            "-h" | "--help" => {
                println!("usage: vmm [--runs N] [--memory-mib M] [--only payload|kernel|vsock]...");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a:?}"),
        }
    }
    if o.runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let mut report = Report::default();
    report.extra(
        "setup",
        serde_json::json!({
            "runs": o.runs,
            "memory_mib": o.setup.memory_mib,
            "vcpus": 1,
            "runv_vmm": o.setup.runv_vmm,
            "qemu": o.setup.qemu,
            "guest_kernel": o.guest_kernel,
        }),
    );
    if o.wants("payload") {
        sections::payload(&o, &mut report)?;
    }
    if o.wants("kernel") {
        sections::kernel(&o, &mut report)?;
    }
    if o.wants("vsock") {
        vsock::run_vm(o.runs, &o.setup.runv_vmm, &mut report)?;
        vsock::run(o.runs, &mut report)?;
    }
    let out_dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("vmm.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    println!(
        "## runv-vmm vs QEMU microvm, {} runs each, {} MiB guest, 1 vCPU\n",
        o.runs, o.setup.memory_mib
    );
    print!("{}", report.markdown());
    println!("\nJSON: {}", path.display());
    Ok(())
}
