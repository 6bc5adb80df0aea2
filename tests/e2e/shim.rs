//! containerd-shim-runv-v2 end to end: a real containerd (Debian's) with its own root, state
//! and socket, a busybox image made with umoci, `ctr run --runtime io.containerd.runv.v2`.
//! The harness (`Containerd`) lives in `runv_tests::containerd`, shared with the CRI tests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runv_tests::containerd::{self, Containerd};
use runv_tests::*;

const LIMIT: Duration = containerd::LIMIT;
const RUNTIME: &str = containerd::RUNV_RUNTIME;
const IMAGE: &str = containerd::BUSYBOX_IMAGE;
const SHIM: &str = containerd::SHIM;

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
