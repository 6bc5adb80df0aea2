//! The guest half of the graceful shutdown, on runv's real guest kernel and agent: booted
//! under QEMU (`-M microvm` with an i8042 added, TCG where KVM cannot run Linux), the guest
//! gets Ctrl-Alt-Del from QEMU's monitor (`sendkey ctrl-alt-delete`, the same keys
//! runv-vmm's `shutdown` request sends), runv-agent shuts down and the VM ends by itself.
//!
//! Inputs: the newest kernel under /var/cache/runv/kernel/<hash>/ (or RUNV_GUEST_KERNEL) and
//! an initramfs with runv-agent as /init: RUNV_GUEST_INITRD, else target/runv/initrd.img,
//! else /usr/local/share/runv/guest/initrd.img (`make initramfs` builds it). It skips, saying
//! why on stderr, without QEMU, without a kernel that has the i8042 keyboard driver, or
//! without an agent that handles Ctrl-Alt-Del.

#![cfg(target_arch = "x86_64")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What runv-agent logs when it starts the shutdown (also how its binary is recognised).
const AGENT_MARK: &str = "Ctrl-Alt-Del: shutting down";

fn skip(why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: guest_shuts_down_on_ctrl_alt_del: {why}"
    );
}

fn find_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNV_GUEST_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/var/cache/runv/kernel")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop()
}

fn find_initrd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNV_GUEST_INITRD") {
        return Some(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        workspace.join("target/runv/initrd.img"),
        PathBuf::from("/usr/local/share/runv/guest/initrd.img"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Collects console lines into `console` until one contains `what`; false on timeout or EOF.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    console: &mut String,
    what: &str,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if line.contains(what) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn guest_shuts_down_on_ctrl_alt_del() {
    if !qemu_available() {
        return skip("no qemu-system-x86_64");
    }
    let Some(kernel) = find_kernel() else {
        return skip("no guest kernel (guest-kernel-config/build.sh, or RUNV_GUEST_KERNEL)");
    };
    // The kernel's final .config sits next to it in the cache.
    if let Ok(config) = std::fs::read_to_string(kernel.with_file_name("config")) {
        if !config.contains("CONFIG_KEYBOARD_ATKBD=y") || !config.contains("CONFIG_VT=y") {
            return skip(&format!(
                "{} has no i8042 keyboard driver (rebuild it from the current \
                 guest-kernel-config)",
                kernel.display()
            ));
        }
    }
    let Some(initrd) = find_initrd() else {
        return skip("no initramfs (make initramfs, or RUNV_GUEST_INITRD)");
    };
    if !contains(&std::fs::read(&initrd).unwrap(), AGENT_MARK.as_bytes()) {
        return skip(&format!(
            "the runv-agent in {} does not handle Ctrl-Alt-Del yet (make initramfs)",
            initrd.display()
        ));
    }
    // TCG unless RUNV_QEMU_ACCEL=kvm: software KVM such as kvm-pvm cannot run a Linux guest.
    let accel = std::env::var("RUNV_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let monitor = dir.as_path().join("monitor.sock");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=off,x-option-roms=off,rtc=off"])
        .args(["-accel", &accel, "-cpu", "max", "-smp", "1", "-m", "256M"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio", "-device", "i8042"])
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 reboot=t panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let ready = wait_for(&rx, &mut console, "system ready", Duration::from_secs(120));
    let keyboard = console.contains("input: AT");
    if !ready || !keyboard {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the guest did not come up with a keyboard (ready {ready}):\n{console}");
    }
    let mut mon = UnixStream::connect(&monitor).unwrap();
    mon.write_all(b"sendkey ctrl-alt-delete\n").unwrap();
    let asked = Instant::now();
    let shutting_down = wait_for(&rx, &mut console, AGENT_MARK, Duration::from_secs(30));
    let restarting = shutting_down
        && wait_for(
            &rx,
            &mut console,
            "reboot: Restarting system",
            Duration::from_secs(30),
        );
    let mut status = None;
    while asked.elapsed() < Duration::from_secs(60) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    while let Ok(line) = rx.try_recv() {
        console.push_str(&line);
        console.push('\n');
    }
    assert!(
        shutting_down,
        "the agent did not start the shutdown:\n{console}{err}"
    );
    assert!(restarting, "the guest did not reboot:\n{console}{err}");
    // -no-reboot: the guest's reboot ends QEMU with status 0.
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "QEMU did not end by itself:\n{console}{err}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "guest_shuts_down_on_ctrl_alt_del: VM gone {:?} after the keys ({accel})",
        asked.elapsed()
    );
}
