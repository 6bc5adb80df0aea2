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

fn ready() -> Option<Containerd> {
    containerd::shim_bin();
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
    // The shim's log reaches containerd's, each line naming the pod.
    let log = containerd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("pod VM started") && l.contains(&format!("sandbox=\"{id}\""))),
        "no shim line naming the sandbox in containerd's log:\n{log}"
    );
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
    let socket = containerd.shim_socket("default", &id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (Path::new(STATE_DIR).join(&id).exists() || socket.exists()) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_leaks(&id);
    assert!(
        !socket.exists(),
        "the dead shim's socket {} is left",
        socket.display()
    );
    let out = containerd.ctr(&["container", "delete", &id], LIMIT);
    assert!(out.status.success(), "container delete: {}", stderr(&out));
}

#[test]
fn shim_prints_its_version() {
    let out = Command::new(containerd::shim_bin())
        .arg("-v")
        .output()
        .expect("run the shim");
    assert!(out.status.success());
    assert!(stdout(&out).contains(RUNTIME), "{}", stdout(&out));
}

/// `ctr events` of this containerd, written to a file until dropped.
struct EventLog {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl EventLog {
    fn start(containerd: &Containerd) -> Self {
        let path = containerd
            .dir()
            .join(format!("{}.events", unique_name("ev")));
        let file = std::fs::File::create(&path).expect("events file");
        let child = Command::new("ctr")
            .arg("--address")
            .arg(containerd.socket())
            .arg("events")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        // Give the subscription a moment to be in place before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, path }
    }

    /// The topics seen so far for container `id`, in order.
    fn topics(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(id))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
            .map(str::to_string)
            .collect()
    }

    /// Waits until `topic` was seen for `id`.
    fn wait_for(&self, id: &str, topic: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.topics(id).iter().any(|t| t == topic) {
            assert!(
                Instant::now() < deadline,
                "no {topic} event for {id}: {:?}",
                self.topics(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name` in `ctr task metrics` output ("NAME   VALUE" lines).
fn metric(table: &str, name: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == name).then(|| fields.next()?.parse().ok())?
    })
}

/// The memory limit of the task `exec_ps_metrics_pause_and_oom_of_a_running_task` runs.
const MEMORY_LIMIT: u64 = 24 * 1024 * 1024;

#[test]
fn exec_ps_metrics_pause_and_oom_of_a_running_task() {
    let Some(containerd) = ready() else {
        return;
    };
    let id = unique_name("shim-ops");
    let events = EventLog::start(&containerd);
    with_leak_check(&id, || {
        let out = containerd.ctr(
            &[
                "run",
                "-d",
                "--runtime",
                RUNTIME,
                "--memory-limit",
                &MEMORY_LIMIT.to_string(),
                IMAGE,
                &id,
                "sleep",
                "1000",
            ],
            LIMIT,
        );
        assert!(out.status.success(), "run -d: {}", stderr(&out));
        containerd.wait_for_task(&id, "RUNNING");
        let ctr = |args: &[&str]| containerd.ctr(args, LIMIT);

        // Exec: output, exit status, the container's pid namespace (its init is sleep).
        let out = ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo from-exec; cat /proc/1/cmdline; echo; echo err >&2; exit 5",
        ]);
        assert_eq!(out.status.code(), Some(5), "exec: {}", stderr(&out));
        assert_eq!(stdout(&out), "from-exec\nsleep\u{0}1000\u{0}\n");
        assert!(stderr(&out).contains("err"), "{}", stderr(&out));
        // Stdin reaches an exec process, and its end too.
        let out = containerd.ctr_with_stdin(
            &["task", "exec", "--exec-id", "e-in", &id, "cat"],
            Some(b"through stdin\n"),
            LIMIT,
        );
        assert_eq!(out.status.code(), Some(0), "exec cat: {}", stderr(&out));
        assert_eq!(stdout(&out), "through stdin\n");
        // A terminal: ctr needs one itself, so `script` gives it a pty.
        let exec_tty = format!(
            "ctr --address {} task exec -t --exec-id e-tty {id} sh -c 'tty; exit 3'",
            containerd.socket().display()
        );
        let out = run_with_limit(
            {
                let mut cmd = Command::new("script");
                cmd.args(["-qec", &exec_tty, "/dev/null"]);
                cmd
            },
            None,
            LIMIT,
        );
        assert_eq!(out.status.code(), Some(3), "exec -t: {}", stderr(&out));
        assert!(stdout(&out).contains("/dev/pts/"), "{:?}", stdout(&out));
        // A missing program is an error of the exec, not a hang.
        let out = ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e-missing",
            &id,
            "no-such-program",
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("no-such-program"), "{}", stderr(&out));

        // ps lists the init and a running exec process, named by its exec id.
        let mut sleeper = Command::new("ctr");
        sleeper
            .arg("--address")
            .arg(containerd.socket())
            .args(["task", "exec", "--exec-id", "e-sleep", &id, "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut sleeper = sleeper.spawn().expect("ctr task exec");
        let deadline = Instant::now() + LIMIT;
        let ps = loop {
            let out = ctr(&["task", "ps", &id]);
            assert!(out.status.success(), "ps: {}", stderr(&out));
            let ps = stdout(&out);
            if ps.contains("e-sleep") {
                break ps;
            }
            assert!(Instant::now() < deadline, "exec never listed: {ps}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(ps.lines().count(), 3, "header, init and exec: {ps}");
        let out = ctr(&["task", "kill", "--exec-id", "e-sleep", "-s", "KILL", &id]);
        assert!(out.status.success(), "kill exec: {}", stderr(&out));
        let status = sleeper.wait().expect("wait for exec");
        assert_eq!(status.code(), Some(137));

        // SIGTERM, `ctr task kill`'s default, reaches a process that handles it.
        let mut term = Command::new("ctr");
        term.arg("--address")
            .arg(containerd.socket())
            .args(["task", "exec", "--exec-id", "e-term", &id, "sh", "-c"])
            .arg("trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut term = term.spawn().expect("ctr task exec");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(term.stdout.take().expect("exec stdout")),
            &mut line,
        )
        .expect("read the exec's output");
        assert_eq!(line, "ready\n", "the exec did not start");
        let out = ctr(&["task", "kill", "--exec-id", "e-term", &id]);
        assert!(out.status.success(), "kill TERM: {}", stderr(&out));
        assert_eq!(term.wait().expect("wait for exec").code(), Some(42));

        // Metrics from the guest's cgroup.
        let out = ctr(&["task", "metrics", &id]);
        assert!(out.status.success(), "metrics: {}", stderr(&out));
        let table = stdout(&out);
        assert!(metric(&table, "pids.current").unwrap_or(0) >= 1, "{table}");
        assert!(metric(&table, "memory.usage").unwrap_or(0) > 0, "{table}");

        // Pause and resume.
        let out = ctr(&["task", "pause", &id]);
        assert!(out.status.success(), "pause: {}", stderr(&out));
        containerd.wait_for_task(&id, "PAUSED");
        let out = ctr(&["task", "pause", &id]);
        assert!(!out.status.success(), "a second pause must fail");
        let out = ctr(&["task", "resume", &id]);
        assert!(out.status.success(), "resume: {}", stderr(&out));
        containerd.wait_for_task(&id, "RUNNING");

        // The memory limit given at run is the container's cgroup limit in the guest, and
        // a process that outgrows it is OOM-killed.
        let table = stdout(&ctr(&["task", "metrics", &id]));
        assert_eq!(
            metric(&table, "memory.usage_limit"),
            Some(MEMORY_LIMIT),
            "{table}"
        );
        let out = ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e-oom",
            &id,
            "tail",
            "/dev/zero",
        ]);
        assert_eq!(out.status.code(), Some(137), "oom exec: {}", stderr(&out));
        events.wait_for(&id, "/tasks/oom");

        let out = ctr(&["task", "kill", "-s", "KILL", &id]);
        assert!(out.status.success(), "kill: {}", stderr(&out));
        containerd.wait_for_task(&id, "STOPPED");
        let out = ctr(&["task", "delete", &id]);
        assert!(out.status.success(), "task delete: {}", stderr(&out));
        let out = ctr(&["container", "delete", &id]);
        assert!(out.status.success(), "container delete: {}", stderr(&out));
    });
    events.wait_for(&id, "/tasks/delete");
    let topics = events.topics(&id);
    let first = |topic: &str| {
        topics
            .iter()
            .position(|t| t == topic)
            .unwrap_or_else(|| panic!("no {topic} in {topics:?}"))
    };
    assert!(first("/tasks/create") < first("/tasks/start"), "{topics:?}");
    assert!(
        first("/tasks/start") < first("/tasks/exec-added"),
        "{topics:?}"
    );
    assert!(
        first("/tasks/exec-added") < first("/tasks/exec-started"),
        "{topics:?}"
    );
    assert!(
        first("/tasks/paused") < first("/tasks/resumed"),
        "{topics:?}"
    );
    assert!(first("/tasks/oom") < first("/tasks/delete"), "{topics:?}");
}

#[test]
fn a_killed_hypervisor_ends_the_task_and_delete_cleans_up() {
    let Some(containerd) = ready() else {
        return;
    };
    let id = unique_name("shim-vmdied");
    let events = EventLog::start(&containerd);
    with_leak_check(&id, || {
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
        let qemu: Vec<i32> = processes_mentioning(&id)
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .filter_map(|p| p.split(':').next()?.trim().parse().ok())
            .collect();
        assert_eq!(qemu.len(), 1, "one hypervisor for the task: {qemu:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemu[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the hypervisor");
        events.wait_for(&id, "/tasks/exit");
        containerd.wait_for_task(&id, "STOPPED");
        let out = containerd.ctr(&["task", "delete", &id], LIMIT);
        assert!(out.status.success(), "task delete: {}", stderr(&out));
        let out = containerd.ctr(&["container", "delete", &id], LIMIT);
        assert!(out.status.success(), "container delete: {}", stderr(&out));
    });
    events.wait_for(&id, "/tasks/delete");
}

#[test]
fn ctr_run_with_a_terminal() {
    let Some(containerd) = ready() else {
        return;
    };
    let id = unique_name("shim-tty");
    let out = with_leak_check(&id, || {
        let command = format!(
            "stty rows 27 cols 91; ctr --address {} run -t --rm --runtime {RUNTIME} {IMAGE} {id} \
             sh -c 'tty; stty size; exit 4'",
            containerd.socket().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &command, "/dev/null"]);
        run_with_limit(cmd, None, LIMIT)
    });
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{text:?} {}", stderr(&out));
    assert!(!text.contains('\0'), "NUL in the output: {text:?}");
    // ctr writes a NUL to the terminal's input at start, which the container's terminal
    // echoes as "^@" (the same under runc).
    let text = text.strip_prefix("^@").unwrap_or(&text);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{text:?}");
    assert!(lines.contains(&"27 91"), "the caller's size: {text:?}");
}

#[test]
fn log_uris_file_and_binary() {
    let Some(containerd) = ready() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "echo to-stdout; echo to-stderr >&2";

    // file://: both streams appended to one file.
    let id = unique_name("shim-logfile");
    let log = dir.path().join("task.log");
    let uri = format!("file://{}", log.display());
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--log-uri",
                &uri,
                IMAGE,
                &id,
                "sh",
                "-c",
                script,
            ],
            LIMIT,
        )
    });
    assert!(out.status.success(), "run: {}", stderr(&out));
    let text = std::fs::read_to_string(&log).expect("the log file");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["to-stderr", "to-stdout"], "{text:?}");

    // binary://: a logging program gets stdout on fd 3, stderr on fd 4, closes fd 5 when
    // ready, and learns the task from its environment.
    let logger = dir.path().join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\n\
         out=\"$2\"\n\
         echo \"$CONTAINER_NAMESPACE $CONTAINER_ID\" > \"$out.env\"\n\
         exec 5>&-\n\
         cat <&3 > \"$out.stdout\" &\n\
         cat <&4 > \"$out.stderr\"\n\
         wait\n",
    )
    .expect("write the logger");
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the logger");
    let id = unique_name("shim-logbin");
    let base = dir.path().join("bin");
    let uri = format!("binary://{}?out={}", logger.display(), base.display());
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--log-uri",
                &uri,
                IMAGE,
                &id,
                "sh",
                "-c",
                script,
            ],
            LIMIT,
        )
    });
    assert!(out.status.success(), "run: {}", stderr(&out));
    let read = |suffix: &str| {
        std::fs::read_to_string(format!("{}.{suffix}", base.display())).unwrap_or_default()
    };
    assert_eq!(read("stdout"), "to-stdout\n");
    assert_eq!(read("stderr"), "to-stderr\n");
    assert_eq!(read("env"), format!("default {id}\n"));
    assert!(
        processes_mentioning(&logger.display().to_string()).is_empty(),
        "the logging program is left"
    );

    // An unknown scheme is refused at create, naming it.
    let id = unique_name("shim-logbad");
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--log-uri",
                "syslog:///x",
                IMAGE,
                &id,
                "true",
            ],
            LIMIT,
        )
    });
    assert!(!out.status.success());
    assert!(stderr(&out).contains("syslog"), "{}", stderr(&out));
}

#[test]
fn pod_annotations_size_the_vm_where_the_config_allows() {
    containerd::shim_bin();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: containerd needs root");
        return;
    }
    let containerd = Containerd::start_with_runv_config(
        "[hypervisor]\nvcpus = 1\nmemory_mib = 256\n\
         [runtime]\nallowed_annotations = [\"io.runv.vcpus\", \"io.runv.memory_mib\"]\n",
    );
    containerd.import_busybox();
    let id = unique_name("shim-size");
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--annotation",
                "io.runv.vcpus=2",
                "--annotation",
                "io.runv.memory_mib=384",
                IMAGE,
                &id,
                "sh",
                "-c",
                "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
            ],
            LIMIT,
        )
    });
    assert!(out.status.success(), "run: {}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("2"), "vCPUs: {text}");
    let mem_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal: {text}"));
    // The kernel keeps some of the 384 MiB for itself; more than the 256 MiB default is
    // what counts.
    assert!(
        mem_kib > 300 * 1024 && mem_kib <= 384 * 1024,
        "MemTotal {mem_kib} kB for 384 MiB"
    );

    // An annotation the config does not allow fails the create, naming it.
    let id = unique_name("shim-size-bad");
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--annotation",
                "io.runv.disk=1",
                IMAGE,
                &id,
                "true",
            ],
            LIMIT,
        )
    });
    assert!(!out.status.success());
    assert!(stderr(&out).contains("io.runv.disk"), "{}", stderr(&out));
}
