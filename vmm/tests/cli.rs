//! End-to-end tests of the runv-vmm binary: argument errors, and whole VM runs with tiny
//! PVH "kernels" (ELF files with a Xen PVH note) assembled here, which print the kernel
//! command line they find through `hvm_start_info`, mark the boot timer and reset.
//! VM runs need /dev/kvm and say on stderr when they skip.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_runv-vmm");
const LOAD_ADDR: u64 = 0x10_0000;

fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// An ELF64 executable loading `code` at 1 MiB, with a PVH entry note pointing at it.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    let phoff = 64u64;
    let note_off = phoff + 2 * 56;
    let code_off = 0x200u64;
    // ELF header
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e.extend_from_slice(&phoff.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&64u16.to_le_bytes());
    e.extend_from_slice(&56u16.to_le_bytes());
    e.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&64u16.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    let phdr = |e: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64| {
        e.extend_from_slice(&ty.to_le_bytes());
        e.extend_from_slice(&5u32.to_le_bytes()); // R+X
        e.extend_from_slice(&off.to_le_bytes());
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&4u64.to_le_bytes());
    };
    phdr(&mut e, 1, code_off, LOAD_ADDR, code.len() as u64); // PT_LOAD
    phdr(&mut e, 4, note_off, 0, 20); // PT_NOTE
                                      // Note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
    e.extend_from_slice(&4u32.to_le_bytes());
    e.extend_from_slice(&4u32.to_le_bytes());
    e.extend_from_slice(&18u32.to_le_bytes());
    e.extend_from_slice(b"Xen\0");
    e.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    e.resize(code_off as usize, 0);
    e.extend_from_slice(code);
    e
}

/// 32-bit code: print the command line from hvm_start_info (ebx) to COM1, newline,
/// boot-timer mark 123 on port 0x440, then `tail`.
fn print_cmdline_then(tail: &[u8]) -> Vec<u8> {
    let mut c = vec![
        0x8b, 0x73, 0x18, // mov esi, [ebx+24]   cmdline_paddr
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x8a, 0x06, // loop: mov al, [esi]
        0x84, 0xc0, // test al, al
        0x74, 0x04, // jz done
        0xee, // out dx, al
        0x46, // inc esi
        0xeb, 0xf6, // jmp loop
        0xb0, 0x0a, 0xee, // done: mov al, '\n'; out dx, al
        0x66, 0xba, 0x40, 0x04, 0xb0, 0x7b, 0xee, // mov dx, 0x440; mov al, 123; out dx, al
    ];
    c.extend_from_slice(tail);
    c
}

const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];
const SPIN: &[u8] = &[0xeb, 0xfe];

fn write_kernel(dir: &Path, code: &[u8]) -> PathBuf {
    let p = dir.join("kernel.elf");
    std::fs::write(&p, pvh_elf(code)).unwrap();
    p
}

fn run_to_end(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let out = run_to_end(
        Command::new(BIN).args(["--kernel", "/nonexistent/vmlinux"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Kernel image /nonexistent/vmlinux does not exist"),
        "{err}"
    );
}

#[test]
fn log_lines_carry_the_sandbox_id() {
    let out = run_to_end(
        Command::new(BIN).args(["--kernel", "/nonexistent/vmlinux", "--id", "sb-42"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("runv-vmm[sb-42]: error: "), "{err}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = run_to_end(
        Command::new(BIN).args(["--kernel", "/bin/sh", "--vcpus", "99"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vCPU count 99"));
    let out = run_to_end(
        Command::new(BIN).args(["--kernel", "/bin/sh", "--memory-mib", "4"]),
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Memory size 4 MiB"));
    let out = run_to_end(
        Command::new(BIN).args(["--kernel", "/bin/sh", "--disk", "/nonexistent.img"]),
        Duration::from_secs(10),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Disk image /nonexistent.img does not exist")
    );
    let out = run_to_end(
        Command::new(BIN).args(["--frobnicate"]),
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown argument \"--frobnicate\""));
}

#[test]
fn kernel_that_is_not_elf_or_bzimage_is_rejected() {
    if !kvm() {
        return skip(
            "kernel_that_is_not_elf_or_bzimage_is_rejected: needs /dev/kvm to get that far",
        );
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let k = dir.as_path().join("junk");
    std::fs::write(&k, b"this is not a kernel at all").unwrap();
    let out = run_to_end(
        Command::new(BIN).arg("--kernel").arg(&k),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither an ELF vmlinux nor a bzImage"));
}

#[test]
fn pvh_payload_sees_cmdline_marks_boot_timer_and_resets() {
    if !kvm() {
        return skip("pvh_payload_sees_cmdline_marks_boot_timer_and_resets: no /dev/kvm");
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &print_cmdline_then(RESET));
    let log = dir.as_path().join("serial.log");
    let disk = dir.as_path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vsock = dir.as_path().join("vsock.sock");
    let out = run_to_end(
        Command::new(BIN)
            .arg("--kernel")
            .arg(&kernel)
            .args([
                "--cmdline",
                "hello=world -- init-arg",
                "--vcpus",
                "2",
                "--memory-mib",
                "64",
            ])
            .arg("--serial")
            .arg(&log)
            .arg("--disk")
            .arg(format!("{},ro", disk.display()))
            .arg("--vsock-uds")
            .arg(&vsock),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let serial = std::fs::read_to_string(&log).unwrap();
    let expected = "console=ttyS0 reboot=k panic=1 \
        virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
        hello=world -- init-arg\n";
    assert_eq!(serial, expected);
    assert!(err.contains("boot-timer: guest mark 123 at"), "{err}");
    assert!(err.contains("guest shut down (i8042 reset)"), "{err}");
}

fn api(sock: &Path, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn api_pause_resume_metrics_and_forced_shutdown() {
    if !kvm() {
        return skip("api_pause_resume_metrics_and_forced_shutdown: no /dev/kvm");
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &print_cmdline_then(SPIN));
    let sock = dir.as_path().join("api.sock");
    let log = dir.as_path().join("serial.log");
    let mut child = Command::new(BIN)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&sock)
        .arg("--serial")
        .arg(&log)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Wait for the boot-timer mark so the guest is known to run.
    let mut marks = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let st = api(&sock, r#"{"action":"status"}"#);
        marks = st["boot_marks"].as_array().map_or(0, |a| a.len());
        if marks > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(marks, 1);
    assert_eq!(api(&sock, r#"{"action":"pause"}"#)["ok"], true);
    assert_eq!(api(&sock, r#"{"action":"status"}"#)["state"], "paused");
    assert_eq!(api(&sock, r#"{"action":"resume"}"#)["ok"], true);
    assert_eq!(api(&sock, r#"{"action":"status"}"#)["state"], "running");
    let m = api(&sock, r#"{"action":"metrics"}"#);
    assert!(m["metrics"]["exits"]["io_out"].as_u64().unwrap() > 0, "{m}");
    assert!(
        m["metrics"]["devices"]["serial"]["bytes_from_guest"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(api(&sock, r#"{"action":"bogus"}"#)["ok"], false);
    // The payload ignores Ctrl-Alt-Del: the VM is stopped after the timeout.
    assert_eq!(
        api(&sock, r#"{"action":"shutdown","timeout_ms":300}"#)["ok"],
        true
    );
    let mut status = None;
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sock.exists(), "API socket left behind");
}

/// 32-bit code: poll the i8042 status port, copy every byte of the keyboard buffer to
/// COM1, and on the Del release (set 1: 0xe0 0xd3) reset through the i8042: a guest that
/// answers Ctrl-Alt-Del by shutting down.
const REBOOT_ON_CTRL_ALT_DEL: &[u8] = &[
    0xe4, 0x64, // poll: in al, 0x64
    0xa8, 0x01, // test al, 1 (output buffer full)
    0x74, 0xfa, // jz poll
    0xe4, 0x60, // in al, 0x60
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xee, // out dx, al
    0x3c, 0xd3, // cmp al, 0xd3
    0x75, 0xef, // jne poll
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al (reset)
    0xeb, 0xfe, // jmp $
];

#[test]
fn api_shutdown_reaches_the_guest_through_the_i8042() {
    if !kvm() {
        return skip("api_shutdown_reaches_the_guest_through_the_i8042: no /dev/kvm");
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &print_cmdline_then(REBOOT_ON_CTRL_ALT_DEL));
    let sock = dir.as_path().join("api.sock");
    let log = dir.as_path().join("serial.log");
    let mut child = Command::new(BIN)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--api-socket")
        .arg(&sock)
        .arg("--serial")
        .arg(&log)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut marks = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let st = api(&sock, r#"{"action":"status"}"#);
        marks = st["boot_marks"].as_array().map_or(0, |a| a.len());
        if marks > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(marks, 1, "the guest runs");
    // A long grace period: the guest's own reset must end the VM well before it.
    let asked = Instant::now();
    assert_eq!(
        api(&sock, r#"{"action":"shutdown","timeout_ms":20000}"#)["ok"],
        true
    );
    let mut status = None;
    while asked.elapsed() < Duration::from_secs(30) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = asked.elapsed();
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    assert!(err.contains("guest shut down (i8042 reset)"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    // The guest saw Ctrl, Alt, Del pressed and Del released, in set 1.
    let console = std::fs::read(&log).unwrap();
    let codes = &console[console.iter().position(|&b| b == b'\n').unwrap() + 1..];
    assert_eq!(codes, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3], "{console:x?}");
    assert!(!sock.exists(), "API socket left behind");
}

/// `(thread name, seccomp mode)` of every thread runv-vmm made in process `pid`.
fn thread_seccomp(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(99);
        let name = name.trim().to_string();
        // KVM's own worker (kvm-nx-lpage-recovery) is a kernel thread in the process.
        if !name.starts_with("kvm-") {
            out.push((name, mode));
        }
    }
    out.sort();
    out
}

#[test]
fn every_thread_kind_runs_under_a_filter() {
    if !kvm() {
        return skip("every_thread_kind_runs_under_a_filter: no /dev/kvm");
    }
    for seccomp in [true, false] {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let kernel = write_kernel(dir.as_path(), &print_cmdline_then(SPIN));
        let sock = dir.as_path().join("api.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("--kernel")
            .arg(&kernel)
            .args(["--vcpus", "2", "--serial", "none"])
            .arg("--vsock-uds")
            .arg(dir.as_path().join("vsock.sock"))
            .arg("--api-socket")
            .arg(&sock)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        if !seccomp {
            cmd.arg("--no-seccomp");
        }
        let child = cmd.spawn().unwrap();
        let start = Instant::now();
        let mut marks = 0;
        while start.elapsed() < Duration::from_secs(10) {
            if sock.exists() {
                let st = api(&sock, r#"{"action":"status"}"#);
                marks = st["boot_marks"].as_array().map_or(0, |a| a.len());
                if marks > 0 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(marks, 1, "the guest runs");
        let threads = thread_seccomp(child.id());
        let _ = api(&sock, r#"{"action":"shutdown","timeout_ms":50}"#);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mode = if seccomp { 2 } else { 0 };
        let want: Vec<(String, u32)> = ["devices", "runv-vmm", "vcpu0", "vcpu1"]
            .iter()
            .map(|n| (n.to_string(), mode))
            .collect();
        assert_eq!(threads, want, "seccomp {seccomp}");
    }
}

#[test]
fn triple_fault_is_a_guest_crash() {
    if !kvm() {
        return skip("triple_fault_is_a_guest_crash: no /dev/kvm");
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    // int3 with an empty IDT: #BP -> #GP -> #DF -> triple fault.
    let kernel = write_kernel(dir.as_path(), &[0xcc, 0xeb, 0xfe]);
    let out = run_to_end(
        Command::new(BIN)
            .arg("--kernel")
            .arg(&kernel)
            .args(["--serial", "none"]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("guest crashed"), "{err}");
}

#[test]
fn guest_panic_message_turns_reset_into_crash() {
    if !kvm() {
        return skip("guest_panic_message_turns_reset_into_crash: no /dev/kvm");
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &print_cmdline_then(RESET));
    let out = run_to_end(
        Command::new(BIN).arg("--kernel").arg(&kernel).args([
            "--serial",
            "none",
            "--cmdline",
            "Kernel panic - not syncing: test",
        ]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("kernel panic"), "{err}");
}

/// Cgroup directories a test may create children in: the v2 hierarchy and, on a v1/v2
/// hybrid host, the v1 `pids` hierarchy too.
fn cgroup_roots() -> Vec<PathBuf> {
    let is_cgroup2 = |p: &Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: an all-zero statfs is a valid value to be filled in.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path string and out pointer.
        unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == 0x6367_7270 }
    };
    let base = Path::new("/sys/fs/cgroup");
    if is_cgroup2(base) {
        return vec![base.to_path_buf()];
    }
    let mut roots = Vec::new();
    if is_cgroup2(&base.join("unified")) {
        roots.push(base.join("unified"));
    }
    if base.join("pids/cgroup.procs").exists() {
        roots.push(base.join("pids"));
    }
    roots
}

fn pids_in(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn jailed_pvh_payload_runs_unprivileged_in_its_root_and_cgroups() {
    let name = "jailed_pvh_payload_runs_unprivileged_in_its_root_and_cgroups";
    if !kvm() {
        return skip(&format!("{name}: no /dev/kvm"));
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return skip(&format!("{name}: the jailer needs root"));
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &print_cmdline_then(SPIN));
    let base = dir.as_path().join("jails");
    let cgroups: Vec<PathBuf> = cgroup_roots()
        .into_iter()
        .map(|r| r.join(format!("runv-vmm-test-{}", std::process::id())))
        .filter(|c| std::fs::create_dir(c).is_ok())
        .collect();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "jail", "--id", "sb-test", "--uid", "65534", "--gid", "65534",
    ])
    .arg("--chroot-base")
    .arg(&base);
    for c in &cgroups {
        cmd.arg("--cgroup").arg(c);
    }
    let mut child = cmd
        .arg("--")
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--serial",
            "/somewhere/else/console.log",
            "--api-socket",
            "/run/x/api.sock",
            "--cmdline",
            "jailed=1",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let jail = base.join("runv-vmm/sb-test");
    let sock = jail.join("root/api.sock");
    let log = jail.join("root/console.log");
    let start = Instant::now();
    let mut marks = 0;
    while start.elapsed() < Duration::from_secs(20) && child.try_wait().unwrap().is_none() {
        if sock.exists() {
            let st = api(&sock, r#"{"action":"status"}"#);
            marks = st["boot_marks"].as_array().map_or(0, |a| a.len());
            if marks > 0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if marks == 0 {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        for c in &cgroups {
            let _ = std::fs::remove_dir(c);
        }
        if out.status.code() == Some(1) && err.contains("Jail setup failed") {
            return skip(&format!(
                "{name}: this host does not allow the jail setup: {}",
                err.trim()
            ));
        }
        panic!("the jailed guest did not run: {:?} {err}", out.status);
    }
    // The console file is in the jail root, owned by the jail uid.
    let serial = std::fs::read_to_string(&log).unwrap();
    assert!(serial.ends_with("jailed=1\n"), "{serial}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), 65534);
    // Every cgroup holds the jailer, the jail's setup process and runv-vmm, which is PID 1 of
    // its own PID namespace (two ids on its NSpid line).
    for c in &cgroups {
        let pids = pids_in(c);
        assert!(pids.contains(&child.id()), "{}: {pids:?}", c.display());
        assert_eq!(pids.len(), 3, "{}: {pids:?}", c.display());
        let in_own_ns = pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 3)
        });
        assert!(
            in_own_ns,
            "{}: no runv-vmm in its PID namespace",
            c.display()
        );
    }
    let _ = api(&sock, r#"{"action":"shutdown","timeout_ms":50}"#);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "runv-vmm's status comes through: {err}"
    );
    // The jail directory is gone, and so are the processes from the cgroups.
    assert!(!jail.exists(), "{} left behind: {err}", jail.display());
    assert!(base.join("runv-vmm").exists());
    for c in &cgroups {
        assert!(pids_in(c).is_empty(), "{}", c.display());
        std::fs::remove_dir(c).unwrap();
    }
    if cgroups.is_empty() {
        skip(&format!(
            "{name}: cgroup part: no cgroup hierarchy to create a test cgroup in"
        ));
    }
}

#[test]
fn jail_refuses_a_cgroup_that_is_not_one() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return skip("jail_refuses_a_cgroup_that_is_not_one: the jailer needs root");
    }
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), RESET);
    let out = run_to_end(
        Command::new(BIN)
            .args(["jail", "--id", "sb-cg", "--uid", "65534", "--gid", "65534"])
            .arg("--chroot-base")
            .arg(dir.as_path().join("jails"))
            .arg("--cgroup")
            .arg(dir.as_path())
            .arg("--")
            .arg("--kernel")
            .arg(&kernel),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a cgroup directory"), "{err}");
    assert!(!dir.as_path().join("jails/runv-vmm/sb-cg").exists());
}

/// A bzImage whose protected-mode part (loaded at 1 MiB, 64-bit entry at +0x200) is `code`.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let setup_sects = 4u8;
    let mut b = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    b[0x1f1] = setup_sects;
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    b[0x211] = 1; // LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    b.extend_from_slice(&[0u8; 0x200]);
    b.extend_from_slice(code);
    b
}

#[test]
fn bzimage_payload_boots_in_long_mode_with_boot_params_and_initrd() {
    if !kvm() {
        return skip("bzimage_payload_boots_in_long_mode_with_boot_params_and_initrd: no /dev/kvm");
    }
    // 64-bit code, rsi = boot_params: print the command line (cmd_line_ptr, 0x228) and the
    // first 6 bytes of the initrd (ramdisk_image, 0x218), mark the boot timer, reset.
    let code: Vec<u8> = [
        &[0x48, 0x89, 0xf3][..],                     // mov rbx, rsi
        &[0x8b, 0xb6, 0x28, 0x02, 0x00, 0x00],       // mov esi, [rsi+0x228]
        &[0x66, 0xba, 0xf8, 0x03],                   // mov dx, 0x3f8
        &[0x8a, 0x06, 0x84, 0xc0, 0x74, 0x06],       // l: mov al,[rsi]; test al,al; jz d
        &[0xee, 0x48, 0xff, 0xc6, 0xeb, 0xf4],       // out dx,al; inc rsi; jmp l
        &[0xb0, 0x0a, 0xee],                         // d: newline
        &[0x8b, 0xb3, 0x18, 0x02, 0x00, 0x00],       // mov esi, [rbx+0x218]
        &[0xb9, 0x06, 0x00, 0x00, 0x00],             // mov ecx, 6
        &[0x8a, 0x06, 0xee, 0x48, 0xff, 0xc6],       // c: mov al,[rsi]; out dx,al; inc rsi
        &[0xff, 0xc9, 0x75, 0xf6],                   // dec ecx; jnz c
        &[0xb0, 0x0a, 0xee],                         // newline
        &[0x66, 0xba, 0x40, 0x04, 0xb0, 0x7c, 0xee], // boot timer mark 124
        RESET,
    ]
    .concat();
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = dir.as_path().join("bzImage");
    std::fs::write(&kernel, bzimage(&code)).unwrap();
    let initrd = dir.as_path().join("initrd");
    std::fs::write(&initrd, b"INITRD and more bytes").unwrap();
    let log = dir.as_path().join("serial.log");
    let out = run_to_end(
        Command::new(BIN)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--cmdline", "via=bzimage"])
            .arg("--serial")
            .arg(&log),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "console=ttyS0 reboot=k panic=1 via=bzimage\nINITRD\n"
    );
    assert!(err.contains("guest mark 124"), "{err}");
}

/// 32-bit `mov dword [addr], value`.
fn mov_mem(addr: u32, value: u32) -> Vec<u8> {
    let mut v = vec![0xc7, 0x05];
    v.extend_from_slice(&addr.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v
}

#[test]
fn payload_virtio_blk_driver_reads_a_sector_through_the_event_loop() {
    if !kvm() {
        return skip(
            "payload_virtio_blk_driver_reads_a_sector_through_the_event_loop: no /dev/kvm",
        );
    }
    // A minimal virtio-blk driver in 32-bit code: initialise the device at 0xd0000000, set up
    // queue 0 (16 entries) at 0x200000, queue one IN request for sector 0, notify (KVM
    // ioeventfd -> runv-vmm event loop -> block processing), poll the used ring, then print the
    // first 8 data bytes and the status digit.
    const B: u32 = 0xd000_0000;
    let (desc, avail, used) = (0x20_0000u32, 0x20_1000u32, 0x20_2000u32);
    let (hdr, data, stat) = (0x20_3000u32, 0x20_4000u32, 0x20_5000u32);
    let mut c = Vec::new();
    for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb)] {
        c.extend(mov_mem(B + off, v));
    }
    for (off, v) in [
        (0x30, 0),
        (0x38, 16),
        (0x80, desc),
        (0x84, 0),
        (0x90, avail),
        (0x94, 0),
        (0xa0, used),
        (0xa4, 0),
        (0x44, 1),
    ] {
        c.extend(mov_mem(B + off, v));
    }
    // Request header: type IN (0), sector 0 (memory starts zeroed).
    c.extend(mov_mem(hdr, 0));
    // Descriptors: header (NEXT), data 512 (NEXT|WRITE), status 1 (WRITE).
    for (i, (addr, len, flags_next)) in [
        (hdr, 16, 1 | (1 << 16)),
        (data, 512, 3 | (2 << 16)),
        (stat, 1, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let d = desc + 16 * i as u32;
        c.extend(mov_mem(d, addr));
        c.extend(mov_mem(d + 4, 0));
        c.extend(mov_mem(d + 8, len));
        c.extend(mov_mem(d + 12, flags_next));
    }
    c.extend(mov_mem(stat, 0xff));
    c.extend(mov_mem(avail + 4, 0)); // ring[0] = descriptor 0
    c.extend(mov_mem(avail, 1 << 16)); // idx = 1
    c.extend(mov_mem(B + 0x70, 0xf)); // DRIVER_OK
    c.extend(mov_mem(B + 0x50, 0)); // QueueNotify(0)
                                    // poll: mov ax, [used+2]; cmp ax, 1; jne poll
    c.extend_from_slice(&[0x66, 0xa1]);
    c.extend_from_slice(&(used + 2).to_le_bytes());
    c.extend_from_slice(&[0x66, 0x83, 0xf8, 0x01, 0x75, 0xf4]);
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.push(0xbe); // mov esi, data
    c.extend_from_slice(&data.to_le_bytes());
    c.extend_from_slice(&[0xb9, 8, 0, 0, 0]); // mov ecx, 8
    c.extend_from_slice(&[0x8a, 0x06, 0xee, 0x46, 0x49, 0x75, 0xf9]); // copy loop
    c.push(0xa0); // mov al, [stat]
    c.extend_from_slice(&stat.to_le_bytes());
    c.extend_from_slice(&[0x04, 0x30, 0xee, 0xb0, 0x0a, 0xee]); // add al,'0'; out; newline
    c.extend_from_slice(RESET);

    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &c);
    let disk = dir.as_path().join("disk.img");
    let mut image = b"RUNVDISK".to_vec();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, image).unwrap();
    let log = dir.as_path().join("serial.log");
    let out = run_to_end(
        Command::new(BIN)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--disk")
            .arg(format!("{},ro", disk.display()))
            .arg("--serial")
            .arg(&log),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "RUNVDISK0\n",
        "{err}"
    );
}

/// 32-bit code that polls the used index at `used` until it reaches `n`.
fn poll_used(used: u32, n: u8) -> Vec<u8> {
    let mut v = vec![0x66, 0xa1];
    v.extend_from_slice(&(used + 2).to_le_bytes());
    v.extend_from_slice(&[0x66, 0x83, 0xf8, n, 0x72, 0xf4]); // cmp ax, n; jb poll
    v
}

/// 32-bit code that sets up queue `sel` of the device at `base`.
fn queue_setup(base: u32, sel: u32, desc: u32) -> Vec<u8> {
    let mut c = Vec::new();
    for (off, v) in [
        (0x30, sel),
        (0x38, 16),
        (0x80, desc),
        (0x90, desc + 0x1000),
        (0xa0, desc + 0x2000),
        (0x44, 1),
    ] {
        c.extend(mov_mem(base + off, v));
    }
    c
}

#[test]
fn payload_vsock_driver_accepts_a_host_connection() {
    if !kvm() {
        return skip("payload_vsock_driver_accepts_a_host_connection: no /dev/kvm");
    }
    // A minimal virtio-vsock driver: post two RX buffers, wait for the REQUEST the host's
    // `CONNECT 1024` produces, answer RESPONSE on TX, wait for the host's data, print it.
    const B: u32 = 0xd000_0000;
    let (rxq, txq, evq) = (0x20_0000u32, 0x21_0000u32, 0x22_0000u32);
    let (rx0, rx1, resp) = (0x30_0000u32, 0x30_1000u32, 0x40_0000u32);
    let mut c = Vec::new();
    for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb)] {
        c.extend(mov_mem(B + off, v));
    }
    c.extend(queue_setup(B, 0, rxq));
    c.extend(queue_setup(B, 1, txq));
    c.extend(queue_setup(B, 2, evq));
    for (i, addr) in [rx0, rx1].into_iter().enumerate() {
        let d = rxq + 16 * i as u32;
        c.extend(mov_mem(d, addr));
        c.extend(mov_mem(d + 8, 4096));
        c.extend(mov_mem(d + 12, 2)); // WRITE
    }
    c.extend(mov_mem(rxq + 0x1000 + 4, 1 << 16)); // ring[0] = 0, ring[1] = 1
    c.extend(mov_mem(rxq + 0x1000, 2 << 16)); // avail idx = 2
    c.extend(mov_mem(B + 0x70, 0xf)); // DRIVER_OK
    c.extend(mov_mem(B + 0x50, 0)); // notify RX
    c.extend(poll_used(rxq + 0x2000, 1)); // the REQUEST arrived in rx0
                                          // RESPONSE: src 3:1024 -> dst 2:<host port from the REQUEST's src_port>.
    c.extend(mov_mem(resp, 3));
    c.extend(mov_mem(resp + 8, 2));
    c.extend(mov_mem(resp + 16, 1024));
    c.push(0xa1); // mov eax, [rx0 + 16]
    c.extend_from_slice(&(rx0 + 16).to_le_bytes());
    c.push(0xa3); // mov [resp + 20], eax
    c.extend_from_slice(&(resp + 20).to_le_bytes());
    c.extend(mov_mem(resp + 28, 1 | (2 << 16))); // type STREAM, op RESPONSE
    c.extend(mov_mem(resp + 36, 65536)); // buf_alloc
    c.extend(mov_mem(txq, resp));
    c.extend(mov_mem(txq + 8, 44));
    c.extend(mov_mem(txq + 0x1000, 1 << 16)); // TX avail idx = 1
    c.extend(mov_mem(B + 0x50, 1)); // notify TX
    c.extend(poll_used(rxq + 0x2000, 2)); // data arrived in rx1
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.push(0xbe); // mov esi, rx1 + 44
    c.extend_from_slice(&(rx1 + 44).to_le_bytes());
    c.extend_from_slice(&[0xb9, 6, 0, 0, 0]); // mov ecx, 6
    c.extend_from_slice(&[0x8a, 0x06, 0xee, 0x46, 0x49, 0x75, 0xf9]); // print loop
    c.extend_from_slice(RESET);

    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &c);
    let uds = dir.as_path().join("vsock.sock");
    let log = dir.as_path().join("serial.log");
    let mut child = Command::new(BIN)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--serial")
        .arg(&log)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let host = loop {
        if let Ok(s) = UnixStream::connect(&uds) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no vsock socket");
        std::thread::sleep(Duration::from_millis(10));
    };
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = host.try_clone().unwrap();
    w.write_all(b"CONNECT 1024\n").unwrap();
    let mut line = String::new();
    BufReader::new(host).read_line(&mut line).unwrap();
    assert!(line.starts_with("OK ") && line.ends_with('\n'), "{line:?}");
    w.write_all(b"hello\n").unwrap();
    let mut status = None;
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
    assert!(!uds.exists(), "vsock socket left behind");
}

#[test]
fn unix_socket_console_keeps_early_output_and_carries_input() {
    if !kvm() {
        return skip("unix_socket_console_keeps_early_output_and_carries_input: no /dev/kvm");
    }
    // After printing the command line: echo COM1 input back until a newline, then reset.
    let echo = [
        0x66, 0xba, 0xfd, 0x03, // top: mov dx, 0x3fd (LSR)
        0xec, 0xa8, 0x01, 0x74, 0xfb, // wait: in al,dx; test al,1; jz wait
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, 0xee, // in al, dx; out dx, al
        0x3c, 0x0a, 0x75, 0xed, // cmp al, '\n'; jne top
    ];
    let code = print_cmdline_then(&[&echo[..], RESET].concat());
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let kernel = write_kernel(dir.as_path(), &code);
    let console = dir.as_path().join("console.sock");
    let mut child = Command::new(BIN)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--serial")
        .arg(format!("unix:{}", console.display()))
        .args(["--cmdline", "con=sock"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let sock = loop {
        if let Ok(s) = UnixStream::connect(&console) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no console socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = sock.try_clone().unwrap();
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "console=ttyS0 reboot=k panic=1 con=sock\n");
    w.write_all(b"ping\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    let mut status = None;
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn payload_activates_vhost_user_fs_under_seccomp() {
    if !kvm() {
        return skip("payload_activates_vhost_user_fs_under_seccomp: no /dev/kvm");
    }
    let Some(virtiofsd) = ["/usr/local/bin/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return skip("payload_activates_vhost_user_fs_under_seccomp: virtiofsd is not installed");
    };
    // Driver init of the fs device (activation runs the vhost-user setup on the vCPU thread,
    // under its seccomp filter), then print K if the device status has no DEVICE_NEEDS_RESET
    // (R otherwise) and reset.
    const B: u32 = 0xd000_0000;
    let mut c = Vec::new();
    for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb)] {
        c.extend(mov_mem(B + off, v));
    }
    c.extend(queue_setup(B, 0, 0x20_0000));
    c.extend(queue_setup(B, 1, 0x21_0000));
    c.extend(mov_mem(B + 0x70, 0xf));
    c.push(0xa1); // mov eax, [B + 0x70]
    c.extend_from_slice(&(B + 0x70).to_le_bytes());
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.extend_from_slice(&[0xa8, 0x40, 0xb0, b'K', 0x74, 0x02, 0xb0, b'R', 0xee]);
    c.extend_from_slice(&[0xb0, 0x0a, 0xee]);
    c.extend_from_slice(RESET);

    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let shared = dir.as_path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let sock = dir.as_path().join("vfs.sock");
    let mut daemon = Command::new(virtiofsd)
        .arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .args(["--sandbox=none", "--cache=never"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let kernel = write_kernel(dir.as_path(), &c);
    let log = dir.as_path().join("serial.log");
    let out = run_to_end(
        Command::new(BIN)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--fs-socket")
            .arg(&sock)
            .args(["--fs-tag", "runvfs"])
            .arg("--serial")
            .arg(&log),
        Duration::from_secs(20),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "K\n", "{err}");
}
