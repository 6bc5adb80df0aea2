//! Helpers for runv's end-to-end tests: they drive the installed `runv` (or `RUNV_BIN`) on
//! real QEMU with the real guest kernel, and check that nothing of a sandbox outlives it.

pub mod cni;
pub mod containerd;
pub mod cri;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The runv binary under test.
pub fn runv_bin() -> PathBuf {
    let bin = std::env::var_os("RUNV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/runv"));
    assert!(
        bin.exists(),
        "{} does not exist: run `make install` first, or set RUNV_BIN",
        bin.display()
    );
    bin
}

/// Where runv keeps sandbox state.
pub const STATE_DIR: &str = "/run/runv";

/// Where the install puts the guest artifacts.
pub const GUEST_DIR: &str = "/usr/local/share/runv/guest";

/// A sandbox name unique to this test process and call.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `runv` command.
pub fn runv() -> Command {
    let mut cmd = Command::new(runv_bin());
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `runv run --rm --name NAME ARGS...` and returns its output; fails the test if it takes
/// longer than `limit` (a hang is a failure, never a wait forever).
pub fn run_container(name: &str, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Output {
    let mut cmd = runv();
    cmd.args(["run", "--rm", "--name", name]).args(args);
    run_with_limit(cmd, stdin, limit)
}

/// Runs `cmd`, feeding `stdin`, killing it and failing if it exceeds `limit`.
pub fn run_with_limit(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    use std::io::Write;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn runv");
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for runv"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(i32::try_from(pid).unwrap_or_default(), libc::SIGKILL) };
            panic!("runv did not finish within {limit:?}");
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    output
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The processes whose command line mentions `needle`, as `pid: cmdline`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Mounts in the host's mount namespace whose mount point mentions `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/1/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Asserts that nothing of sandbox `name` is left: no helper process (qemu, virtiofsd,
/// vhost-device-vsock all carry the sandbox directory or name on their command line), no
/// mount, no state directory. Allows a moment for processes being reaped.
pub fn assert_no_leaks(name: &str) {
    let dir = Path::new(STATE_DIR).join(name);
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let procs = processes_mentioning(&needle);
        let qemu = processes_mentioning(&format!("runv-{name},"));
        let mounts = mounts_mentioning(&needle);
        let exists = dir.exists();
        if procs.is_empty() && qemu.is_empty() && mounts.is_empty() && !exists {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "sandbox {name} leaked: processes {procs:?} {qemu:?}, mounts {mounts:?}, state dir exists: {exists}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the closure, then checks for leaks of `name` whether it passed or not.
pub fn with_leak_check<T>(name: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> T {
    let result = std::panic::catch_unwind(f);
    let leak = std::panic::catch_unwind(|| assert_no_leaks(name));
    match (result, leak) {
        (Ok(v), Ok(())) => v,
        (Err(e), _) | (Ok(_), Err(e)) => std::panic::resume_unwind(e),
    }
}

/// The guest kernel release the install put beside the kernel.
pub fn built_kernel_release() -> String {
    let path = Path::new(GUEST_DIR).join("kernel-release");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Writes a config file that changes some keys from the defaults; returns its path.
pub fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Waits until `runv sandbox list` shows sandbox `name` with its container started; kills
/// `child` (the `runv run` of it) and fails if that takes longer than `limit`.
pub fn wait_until_started(
    name: &str,
    child: &mut std::process::Child,
    limit: Duration,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let mut cmd = runv();
        cmd.args(["sandbox", "list", "--json"]);
        let out = run_with_limit(cmd, None, Duration::from_secs(10));
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("sandbox list --json");
        let found = json
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == name).cloned());
        if let Some(entry) = found.filter(|e| e["containers"][0]["guest_pid"].is_number()) {
            return entry;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("runv run of {name} ended ({status}) before its container started");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{name} not started within {limit:?}: {json}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The processes descending from `roots` (not the roots themselves), as `(pid, cmdline)`.
pub fn descendants_of(roots: &[i32]) -> Vec<(i32, String)> {
    let mut parents = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces) in parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found
        .into_iter()
        .filter(|pid| !roots.contains(pid))
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, String::from_utf8_lossy(&raw).replace('\0', " "))
        })
        .collect()
}
