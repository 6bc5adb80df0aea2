//! Section 4: host memory of one idle sandbox, started by containerd through the runv shim:
//! the PSS of each of its host processes (the hypervisor without its guest RAM, virtiofsd,
//! the vsock backend, the shim), and the guest RAM the hypervisor has touched against what
//! is configured. runc's shim and container, idle the same way, for scale.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runv_tests::containerd::{Containerd, BUSYBOX_IMAGE, RUNV_RUNTIME};
use runv_tests::{descendants_of, processes_mentioning};

use crate::procs::{comm, cpu_seconds, guest_ram_kib, pss_kib};
use crate::report::Report;
use crate::Options;

const SECTION: &str = "4 idle memory";
const LIMIT: Duration = Duration::from_secs(120);
/// How long a fresh sandbox is left alone before it is measured.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the idle hypervisor's CPU use is watched.
const CPU_WINDOW: Duration = Duration::from_secs(3);
/// The figure (in % of one host core, not MiB) kept beside the PSS ones.
const IDLE_CPU: &str = "idle CPU of the hypervisor";

fn mib(kib: u64) -> f64 {
    // Memory figures stay far below 2^52 KiB, where f64 would lose precision.
    #[allow(clippy::cast_precision_loss)]
    let v = kib as f64 / 1024.0;
    v
}

fn ctr_ok(containerd: &Containerd, args: &[&str]) -> Result<()> {
    let out = containerd.ctr(args, LIMIT);
    if !out.status.success() {
        bail!(
            "ctr {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn stop(containerd: &Containerd, id: &str) {
    let _ = containerd.ctr(&["task", "kill", "-s", "SIGKILL", id], LIMIT);
    for _ in 0..100 {
        if containerd
            .ctr(&["task", "delete", id], LIMIT)
            .status
            .success()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = containerd.ctr(&["container", "delete", id], LIMIT);
}

/// The pid of the shim serving task `id` (of any runtime) of this containerd.
fn shim_of(containerd: &Containerd, id: &str) -> Result<i32> {
    let socket = containerd.socket().display().to_string();
    processes_mentioning(&format!("-id {id} "))
        .iter()
        .filter(|p| p.contains(&socket))
        .find_map(|p| p.split(':').next()?.parse().ok())
        .with_context(|| format!("no shim process for task {id}"))
}

/// MiB per kind of process of a sandbox.
type PssByKind = BTreeMap<&'static str, f64>;

/// One idle sandbox: PSS per process kind, and (configured, touched) guest RAM.
fn measure_runv(containerd: &Containerd, id: &str) -> Result<(PssByKind, Option<(f64, f64)>)> {
    ctr_ok(
        containerd,
        &[
            "run",
            "-d",
            "--runtime",
            RUNV_RUNTIME,
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "3600",
        ],
    )?;
    containerd.wait_for_task(id, "RUNNING");
    std::thread::sleep(SETTLE);
    let shim = shim_of(containerd, id)?;
    let mut figures = BTreeMap::new();
    figures.insert("shim (containerd-shim-runv-v2)", mib(pss_kib(shim)?));
    let mut guest = None;
    for (pid, _) in descendants_of(&[shim]) {
        let name = comm(pid);
        let kind = if name.starts_with("qemu-system") || name == "runv-vmm" {
            "hypervisor (without guest RAM)"
        } else if name == "virtiofsd" {
            "virtiofsd"
        } else if name.starts_with("vhost-device-vs") {
            "vsock backend (vhost-device-vsock)"
        } else {
            continue;
        };
        let mut pss = pss_kib(pid)?;
        if kind.starts_with("hypervisor") {
            let before = cpu_seconds(pid)?;
            std::thread::sleep(CPU_WINDOW);
            let used = cpu_seconds(pid)? - before;
            figures.insert(IDLE_CPU, used / CPU_WINDOW.as_secs_f64() * 100.0);
            if let Some((size, rss, ram_pss)) = guest_ram_kib(pid)? {
                pss = pss.saturating_sub(ram_pss);
                guest = Some((mib(size), mib(rss)));
            }
        }
        *figures.entry(kind).or_insert(0.0) += mib(pss);
    }
    stop(containerd, id);
    let total: f64 = figures
        .iter()
        .filter(|(kind, _)| **kind != IDLE_CPU)
        .map(|(_, v)| v)
        .sum();
    figures.insert("total outside guest RAM", total);
    Ok((figures, guest))
}

/// runc's shim and its idle container (PSS, MiB).
fn measure_runc(containerd: &Containerd, id: &str) -> Result<f64> {
    ctr_ok(
        containerd,
        &["run", "-d", BUSYBOX_IMAGE, id, "sleep", "3600"],
    )?;
    containerd.wait_for_task(id, "RUNNING");
    std::thread::sleep(SETTLE);
    let shim = shim_of(containerd, id)?;
    let mut total = pss_kib(shim)?;
    for (pid, _) in descendants_of(&[shim]) {
        total += pss_kib(pid).unwrap_or(0);
    }
    stop(containerd, id);
    Ok(mib(total))
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    let containerd = Containerd::start();
    containerd.import_busybox();
    let runs = o.runs.min(3);
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut configured = Vec::new();
    let mut touched = Vec::new();
    let mut runc = Vec::new();
    for run in 0..runs {
        let (figures, guest) = measure_runv(&containerd, &format!("bench-mem-{run}"))?;
        for (kind, value) in figures {
            samples.entry(kind).or_default().push(value);
        }
        if let Some((size, rss)) = guest {
            configured.push(size);
            touched.push(rss);
        }
        runc.push(measure_runc(&containerd, &format!("bench-mem-runc-{run}"))?);
    }
    for (kind, values) in &samples {
        if *kind == IDLE_CPU {
            report.row(SECTION, *kind, "runv", "%core", values);
        } else {
            report.row(SECTION, format!("PSS: {kind}"), "runv", "MiB", values);
        }
    }
    report.row(SECTION, "guest RAM configured", "runv", "MiB", &configured);
    report.row(SECTION, "guest RAM touched (RSS)", "runv", "MiB", &touched);
    report.row(SECTION, "PSS: shim + container", "runc", "MiB", &runc);
    report.note(
        SECTION,
        format!(
            "one idle `sleep` container per sandbox, measured {}s after it runs; the \
             hypervisor's PSS leaves out its guest RAM mapping (shown as touched/configured); \
             target on hardware KVM with runv-vmm: ≤ 10 MiB outside guest RAM",
            SETTLE.as_secs()
        ),
    );
    Ok(())
}
