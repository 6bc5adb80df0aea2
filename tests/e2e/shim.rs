//! containerd-shim-runv-v2 end to end: a real containerd (Debian's) with its own root, state
//! and socket, a busybox image made with umoci, `ctr run --runtime io.containerd.runv.v2`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use runv_tests::*;

/// Enough for a TCG boot on a loaded 2-core machine, far from a hang.
const LIMIT: Duration = Duration::from_secs(90);
const RUNTIME: &str = "io.containerd.runv.v2";
const IMAGE: &str = "runv.test/busybox:latest";
const SHIM: &str = "/usr/local/bin/containerd-shim-runv-v2";

/// A containerd of this test alone; stopped, with whatever shims it left, on every path.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("runv-ctd")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{root}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{root}/containerd.sock.ttrpc\"\n",
            root = root.display()
        );
        let config_path = config_file(root, &config);
        let log = std::fs::File::create(root.join("containerd.log")).expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start containerd (scripts/install-deps.sh installs it)");
        let containerd = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = containerd.ctr(&["version"], Duration::from_secs(10));
            if out.status.success() {
                return containerd;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}\n{}",
                stderr(&out),
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str], limit: Duration) -> Output {
        self.ctr_with_stdin(args, None, limit)
    }

    /// `ctr ARGS...` with `stdin` fed to it (`ctr run` passes its stdin to the task).
    fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(args);
        cmd.stdin(Stdio::null());
        run_with_limit(cmd, stdin, limit)
    }

    /// Builds an OCI image of the installed busybox root with umoci and imports it.
    fn import_busybox(&self) {
        let work = self.dir.path().join("image");
        let layout = work.join("layout");
        let bundle = work.join("bundle");
        let tagged = format!("{}:latest", layout.display());
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run umoci");
            assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
        };
        std::fs::create_dir_all(&work).expect("image dir");
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &tagged]));
        run(Command::new("umoci")
            .args(["unpack", "--image", &tagged])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", busybox_root().display()))
            .arg(&rootfs));
        run(Command::new("umoci")
            .args(["repack", "--image", &tagged])
            .arg(&bundle));
        run(Command::new("umoci").args(["config", "--image", &tagged, "--config.cmd", "sh"]));
        let tar = work.join("busybox.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let tar = tar.display().to_string();
        let out = self.ctr(
            &["image", "import", "--base-name", "runv.test/busybox", &tar],
            LIMIT,
        );
        assert!(out.status.success(), "import: {}", stderr(&out));
    }

    /// `ctr run --runtime io.containerd.runv.v2 --rm IMAGE ID ARGS...`.
    fn run(&self, id: &str, args: &[&str]) -> Output {
        let mut all = vec!["run", "--runtime", RUNTIME, "--rm", IMAGE, id];
        all.extend_from_slice(args);
        self.ctr(&all, LIMIT)
    }
}

fn busybox_root() -> PathBuf {
    let installed = Path::new("/usr/local/share/runv/rootfs/busybox");
    assert!(
        installed.join("bin/busybox").exists(),
        "{} is missing: run `make install`",
        installed.display()
    );
    installed.to_path_buf()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or_default());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims this containerd started carry its socket on their command line.
        for entry in processes_mentioning(&self.socket().display().to_string()) {
            if let Some(Ok(pid)) = entry.split(':').next().map(str::parse::<i32>) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // containerd's own mounts under its root (none are expected; never leave one).
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = mounts_mentioning(&root)
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn ready() -> Option<Containerd> {
    assert!(
        Path::new(SHIM).exists(),
        "{SHIM} does not exist: run `make install`"
    );
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: containerd needs root");
        return None;
    }
    let containerd = Containerd::start();
    containerd.import_busybox();
    Some(containerd)
}

#[test]
fn ctr_run_in_a_runv_vm() {
    let Some(containerd) = ready() else {
        return;
    };

    let id = unique_name("shim-kernel");
    let out = with_leak_check(&id, || containerd.run(&id, &["uname", "-r"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\ncontainerd log:\n{}",
        stderr(&out),
        containerd.log()
    );
    let guest = stdout(&out).trim().to_string();
    let host = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_eq!(guest, built_kernel_release());
    assert_ne!(guest, host, "the container must not run on the host kernel");
    assert!(
        processes_mentioning(&id).is_empty(),
        "a shim of {id} is left"
    );

    let id = unique_name("shim-exit");
    let out = with_leak_check(&id, || {
        containerd.run(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"])
    });
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err"), "stderr: {}", stderr(&out));
    assert!(
        processes_mentioning(&id).is_empty(),
        "a shim of {id} is left"
    );
}

impl Containerd {
    /// Waits until `ctr task ls` shows task `id` as `status`.
    fn wait_for_task(&self, id: &str, status: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let out = self.ctr(&["task", "ls"], Duration::from_secs(10));
            let listed = stdout(&out)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status));
            if listed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never {status}: {}\n{}",
                stdout(&out),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn shim_pid(&self, id: &str) -> Option<i32> {
        processes_mentioning(&format!(
            "containerd-shim-runv-v2 -namespace default -id {id} "
        ))
        .first()
        .and_then(|p| p.split(':').next()?.parse().ok())
    }
}

#[test]
fn kill_all_ends_the_task_with_137_and_a_killed_shim_leaves_nothing() {
    let Some(containerd) = ready() else {
        return;
    };

    let id = unique_name("shim-kill");
    with_leak_check(&id, || {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(containerd.socket());
        cmd.args([
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            &id,
            "sleep",
            "1000",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut run = cmd.spawn().expect("ctr run");
        containerd.wait_for_task(&id, "RUNNING");
        let out = containerd.ctr(&["task", "kill", "-a", "-s", "KILL", &id], LIMIT);
        assert!(out.status.success(), "kill: {}", stderr(&out));
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = run.try_wait().expect("wait for ctr run") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = run.kill();
                panic!("ctr run did not end after the kill");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(137));
    });

    // A shim killed while its VM runs: its helpers die with it, its mounts with its mount
    // namespace, and containerd's cleanup (the shim's delete action) removes the state.
    let id = unique_name("shim-crash");
    let out = containerd.ctr(
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            &id,
            "sleep",
            "1000",
        ],
        LIMIT,
    );
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    containerd.wait_for_task(&id, "RUNNING");
    let shim = containerd.shim_pid(&id).expect("the shim of the task");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(STATE_DIR).join(&id).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_leaks(&id);
    let out = containerd.ctr(&["container", "delete", &id], LIMIT);
    assert!(out.status.success(), "container delete: {}", stderr(&out));
}

#[test]
fn shim_prints_its_version() {
    let out = Command::new(SHIM).arg("-v").output().expect("run the shim");
    assert!(out.status.success());
    assert!(stdout(&out).contains(RUNTIME), "{}", stdout(&out));
}
