//! Boots runv's guest kernel (built by guest-kernel-config/build.sh into
//! /var/cache/runv/kernel/<hash>/vmlinux, or the file named by RUNV_GUEST_KERNEL) and checks
//! that the serial log shows the kernel banner and the exact command line runv-vmm composed.
//!
//! On kvm-pvm (software virtualization) the kernel stops early with a KVM internal error;
//! the test then checks what was printed up to that point and reports where it stopped.
//! It skips, saying why on stderr, when there is no kernel or no /dev/kvm.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runv-vmm");

fn report(msg: &str) {
    // Straight to stderr: the test harness does not capture it.
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn find_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNV_GUEST_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/var/cache/runv/kernel")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop()
}

#[test]
fn guest_kernel_prints_banner_and_exact_cmdline() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return report("SKIPPED: guest_kernel_prints_banner_and_exact_cmdline: no /dev/kvm");
    }
    let Some(kernel) = find_kernel() else {
        return report(
            "SKIPPED: guest_kernel_prints_banner_and_exact_cmdline: no guest kernel under \
             /var/cache/runv/kernel/<hash>/vmlinux (build it with guest-kernel-config/build.sh \
             or set RUNV_GUEST_KERNEL)",
        );
    };
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let log = dir.as_path().join("serial.log");
    let vsock = dir.as_path().join("vsock.sock");
    let mut child = Command::new(BIN)
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "128", "--vcpus", "1"])
        .args([
            "--cmdline",
            "earlyprintk=serial,ttyS0,115200 loglevel=8 runv.test=1",
        ])
        .arg("--serial")
        .arg(&log)
        .arg("--vsock-uds")
        .arg(&vsock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut killed = false;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    let cmdline = stderr
        .lines()
        .find_map(|l| {
            l.split_once("kernel command line: ")
                .map(|(_, c)| c.to_string())
        })
        .unwrap_or_else(|| panic!("runv-vmm did not report its command line: {stderr}"));
    let tail: Vec<&str> = serial.lines().rev().take(5).collect();
    report(&format!(
        "guest kernel {}: exit {:?}{}; runv-vmm said: {}; last serial lines: {:?}",
        kernel.display(),
        out.status.code(),
        if killed { " (killed after 60 s)" } else { "" },
        stderr.trim().replace('\n', " | "),
        tail
    ));
    assert!(
        serial.contains("Linux version"),
        "no kernel banner in: {serial}"
    );
    assert!(
        serial.contains(&format!("Command line: {cmdline}")),
        "command line {cmdline:?} not in: {serial}"
    );
    // A guest that stops early here must do so as a reported guest failure, not a VMM error.
    assert!(
        killed || matches!(out.status.code(), Some(0) | Some(2)),
        "{stderr}"
    );
}
