//! The comparison sections: runs alternate between the monitors (one at a time, so they never
//! compete for the CPUs) and every sample lands in the report.

use anyhow::{Context, Result};
use serde_json::json;

use crate::boot;
use crate::child::ScratchDir;
use crate::monitors::Monitor;
use crate::payload;
use crate::report::Report;
use crate::stats::Summary;
use crate::Options;

const KVM_PVM: &str = "/dev/kvm here may be kvm-pvm, a software virtualization backend: absolute \
     times are not hardware-KVM times; compare the monitors by their ratio";

#[derive(Default)]
struct Samples {
    first_byte: Vec<f64>,
    boot_mark: Vec<f64>,
    rss: Vec<f64>,
    pss: Vec<f64>,
    guest: Vec<f64>,
    total_rss: Vec<f64>,
}

/// Payload start-up (figure 1) and memory overhead (figure 3), from the same runs.
pub fn payload(o: &Options, report: &mut Report) -> Result<()> {
    let dir = ScratchDir::new("vmm")?;
    let kernel = dir.path().join("payload.elf");
    std::fs::write(&kernel, payload::pvh_elf(&payload::first_byte_then_idle()))?;
    let mut samples = [Samples::default(), Samples::default()];
    for _ in 0..o.runs {
        for (i, m) in Monitor::ALL.into_iter().enumerate() {
            let run = boot::payload_run(&o.setup, m, &kernel)
                .with_context(|| format!("payload on {}", m.name()))?;
            let s = &mut samples[i];
            s.first_byte.push(run.first_byte_ms);
            s.boot_mark.extend(run.boot_mark_ms);
            s.rss.push(kib_to_mib(run.memory.overhead_rss_kb()));
            s.pss.push(kib_to_mib(run.memory.overhead_pss_kb()));
            s.guest.push(kib_to_mib(run.memory.guest_rss_kb));
            s.total_rss.push(kib_to_mib(run.memory.rss_kb));
        }
    }
    let start = "1. start → first guest instruction";
    for (i, m) in Monitor::ALL.into_iter().enumerate() {
        report.row(
            start,
            "spawn → payload's first COM1 byte read from the pipe",
            m.name(),
            "ms",
            &samples[i].first_byte,
        );
    }
    report.row(
        start,
        "runv-vmm main() → boot-timer mark (its own clock)",
        "runv-vmm",
        "ms",
        &samples[0].boot_mark,
    );
    let ratio = median(&samples[1].first_byte) / median(&samples[0].first_byte);
    report.extra(
        "first_instruction",
        json!({"qemu_over_runv_vmm_median": ratio}),
    );
    report.note(
        start,
        format!(
            "the same PVH ELF payload for both; its first instruction writes one byte to COM1 \
             (0x3f8), then a boot-timer mark (port 0x440, logged by runv-vmm; QEMU has nothing \
             there), then idles in hlt. The clock starts just before the spawn and stops when the \
             byte arrives on the monitor's stdout (a pipe; COM1 is `--serial stdio` / `-serial \
             stdio` for both). QEMU's figure includes its firmware (qboot and the PVH option ROM) \
             running before the payload, since that is part of its start. The boot-timer row is \
             runv-vmm's own log of the mark, counted from the start of its main(): it leaves out \
             exec and dynamic loading. Runs alternate between the monitors, one VM at a time; \
             on a busy host the spread is wide and the medians are what to compare. Median \
             QEMU / runv-vmm: {ratio:.1}×. {KVM_PVM}."
        ),
    );
    let mem = "3. memory overhead";
    for (i, m) in Monitor::ALL.into_iter().enumerate() {
        report.row(
            mem,
            "RSS − touched guest RAM",
            m.name(),
            "MiB",
            &samples[i].rss,
        );
        report.row(
            mem,
            "PSS − touched guest RAM (PSS)",
            m.name(),
            "MiB",
            &samples[i].pss,
        );
        report.row(
            mem,
            "touched guest RAM (RSS of the RAM memfd)",
            m.name(),
            "MiB",
            &samples[i].guest,
        );
        report.row(
            mem,
            "whole process RSS",
            m.name(),
            "MiB",
            &samples[i].total_rss,
        );
    }
    memory_verdict(o, report, &samples)?;
    Ok(())
}

fn memory_verdict(o: &Options, report: &mut Report, samples: &[Samples; 2]) -> Result<()> {
    let runv = Summary::of(&samples[0].rss).context("no runv-vmm samples")?;
    let qemu = Summary::of(&samples[1].rss).context("no QEMU samples")?;
    let runv_pss = Summary::of(&samples[0].pss).context("no runv-vmm samples")?;
    let qemu_pss = Summary::of(&samples[1].pss).context("no QEMU samples")?;
    let ratio = qemu.median / runv.median;
    let pss_ratio = qemu_pss.median / runv_pss.median;
    let target_met = runv.max <= 4.0;
    report.extra(
        "memory_overhead",
        json!({
            "qemu_over_runv_vmm_rss_median": ratio,
            "qemu_over_runv_vmm_pss_median": pss_ratio,
            "runv_vmm_target_mib": 4.0,
            "runv_vmm_target_met": target_met,
        }),
    );
    report.note(
        "3. memory overhead",
        format!(
            "from the payload runs of section 1, read {} ms after the payload's first line with \
             the guest idle: smaps_rollup of the monitor process minus its guest RAM mapping \
             (the memfd of exactly {} MiB) in smaps; RSS counts shared library pages in full, \
             PSS divides them among their users. QEMU's firmware ROM is counted as its overhead. \
             Median overhead QEMU / runv-vmm: {ratio:.1}× (RSS), {pss_ratio:.1}× (PSS). Target \
             runv-vmm RSS overhead ≤ 4 MiB: {} (max {:.2} MiB).",
            200,
            o.setup.memory_mib,
            if target_met { "met" } else { "NOT met" },
            runv.max
        ),
    );
    Ok(())
}

/// Start to the guest kernel's first console line (figure 2).
pub fn kernel(o: &Options, report: &mut Report) -> Result<()> {
    let section = "2. start → first kernel console line";
    let kernel = &o.guest_kernel;
    if !kernel.is_file() {
        report.note(
            section,
            format!("SKIPPED: no guest kernel at {}", kernel.display()),
        );
        return Ok(());
    }
    let mut samples = [Vec::new(), Vec::new()];
    let mut first_lines = [String::new(), String::new()];
    for _ in 0..o.runs {
        for (i, m) in Monitor::ALL.into_iter().enumerate() {
            let (t, line) = boot::kernel_run(&o.setup, m, kernel)
                .with_context(|| format!("guest kernel on {}", m.name()))?;
            samples[i].push(t);
            first_lines[i] = line;
        }
    }
    for (i, m) in Monitor::ALL.into_iter().enumerate() {
        report.row(
            section,
            "spawn → first kernel console line read from the pipe",
            m.name(),
            "ms",
            &samples[i],
        );
    }
    let ratio = median(&samples[1]) / median(&samples[0]);
    report.extra(
        "kernel_first_line",
        json!({"qemu_over_runv_vmm_median": ratio}),
    );
    report.note(
        section,
        format!(
            "{} booted with `console=ttyS0 earlyprintk=ttyS0 loglevel=7` (runv-vmm adds its \
             `reboot=k panic=1`), COM1 on a pipe; the clock stops at the first newline. Both \
             monitors are killed right after that line: on kvm-pvm the kernel stops later in \
             early boot (an emulation failure), which is expected, so later boot phases are not \
             measured here. First line seen — runv-vmm: {:?}; QEMU: {:?}. Median QEMU / \
             runv-vmm: {ratio:.2}×. {KVM_PVM}.",
            kernel.display(),
            first_lines[0],
            first_lines[1]
        ),
    );
    Ok(())
}

fn median(samples: &[f64]) -> f64 {
    Summary::of(samples).map_or(f64::NAN, |s| s.median)
}

fn kib_to_mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}
