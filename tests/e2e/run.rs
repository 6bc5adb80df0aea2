//! `runv run` end to end: a real QEMU VM, the real guest kernel, runv-agent, a container.

use std::time::{Duration, Instant};

use runv_tests::*;

/// Enough for a TCG boot on a loaded 2-core machine, far from a hang.
const LIMIT: Duration = Duration::from_secs(90);

#[test]
fn guest_kernel_is_ours_not_the_hosts() {
    let name = unique_name("kernel");
    let out = with_leak_check(&name, || {
        run_container(&name, &["--", "uname", "-r"], None, LIMIT)
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let guest = stdout(&out).trim().to_string();
    let host = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        guest,
        built_kernel_release(),
        "the guest runs the kernel built from guest-kernel-config"
    );
    assert_ne!(guest, host, "the container must not run on the host kernel");
}

#[test]
fn exit_statuses_come_through() {
    for (script, expected) in [("exit 0", 0), ("exit 7", 7)] {
        let name = unique_name("exit");
        let out = with_leak_check(&name, || {
            run_container(&name, &["--", "sh", "-c", script], None, LIMIT)
        });
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{script}: stderr {}",
            stderr(&out)
        );
    }
}

#[test]
fn sigkill_gives_137() {
    // The container's init is PID 1 of its namespace and cannot SIGKILL itself: the signal
    // comes from outside, through `runv kill`, as from `docker kill`.
    let name = unique_name("sigkill");
    with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.args(["run", "--rm", "--name", &name, "--", "sleep", "600"]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn runv");
        wait_until_started(&name, &mut child, LIMIT);
        let kill = run_with_limit(
            {
                let mut c = runv();
                c.args(["kill", &name, "KILL"]);
                c
            },
            None,
            Duration::from_secs(20),
        );
        assert_eq!(kill.status.code(), Some(0), "runv kill: {}", stderr(&kill));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < LIMIT,
                "runv run did not end after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(137));
    });
}

#[test]
fn stdout_and_stderr_arrive_separately() {
    let name = unique_name("streams");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &[
                "--",
                "sh",
                "-c",
                "echo to-out; echo to-err >&2; echo more-out",
            ],
            None,
            LIMIT,
        )
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "to-out\nmore-out\n");
    assert_eq!(stderr(&out), "to-err\n");
}

#[test]
fn ten_mib_through_cat_come_back_byte_exact() {
    let mut data = vec![0u8; 10 * 1024 * 1024];
    // A simple xorshift fills it with bytes of every value, newlines and NULs included.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let name = unique_name("cat");
    let out = with_leak_check(&name, || {
        run_container(&name, &["-i", "--", "cat"], Some(&data), LIMIT)
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(out.stdout.len(), data.len(), "length of what came back");
    assert!(out.stdout == data, "the bytes differ");
}

#[test]
fn stdin_end_reaches_the_container() {
    let name = unique_name("stdin");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &["-i", "--", "sh", "-c", "wc -l; echo done"],
            Some(b"a\nb\nc\n"),
            LIMIT,
        )
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["3", "done"]
    );
}

#[test]
fn env_workdir_and_user_take_effect() {
    let name = unique_name("opts");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &[
                "-e",
                "GREETING=hello world",
                "-w",
                "/tmp",
                "-u",
                "1000:1001",
                "--",
                "sh",
                "-c",
                "echo \"$GREETING\"; pwd; id -u; id -g; hostname",
            ],
            None,
            LIMIT,
        )
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("hello world\n/tmp\n1000\n1001\n{name}\n")
    );
}

#[test]
fn container_has_its_own_pid_namespace_in_a_guest_cgroup() {
    let name = unique_name("ns");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &["--", "sh", "-c", "echo $$; cat /proc/self/cgroup"],
            None,
            LIMIT,
        )
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("1"),
        "the container's process is PID 1 of its namespace: {text}"
    );
    assert_eq!(
        lines.next(),
        Some("0::/"),
        "cgroup v2, seen from the container's cgroup namespace: {text}"
    );
}

#[test]
fn tty_mode_gives_a_real_terminal_of_the_callers_size() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 111,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
    let name = unique_name("tty");
    let out = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.args([
            "run",
            "--rm",
            "-t",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "tty; stty size",
        ]);
        let slave = |fd: &OwnedFd| std::process::Stdio::from(fd.try_clone().expect("dup pty"));
        cmd.stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        let mut child = cmd.spawn().expect("spawn runv");
        // Read the master until the slave side is closed by everyone.
        let master_fd = pty.master.try_clone().expect("dup master");
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            // SAFETY: into_raw_fd hands over sole ownership of the duplicated descriptor.
            let mut master = unsafe {
                std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master_fd))
            };
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match master.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
                if String::from_utf8_lossy(&all).contains("33 111") {
                    break;
                }
            }
            all
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("runv -t did not finish within {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = pty.master.as_raw_fd();
        (status, reader.join().unwrap())
    });
    let (status, output) = out;
    let text = String::from_utf8_lossy(&output);
    assert_eq!(status.code(), Some(0), "output: {text}");
    assert!(text.contains("/dev/pts/"), "tty inside: {text:?}");
    assert!(
        text.contains("33 111"),
        "window size passed through: {text:?}"
    );
}

#[test]
fn missing_command_is_127_with_a_clear_error() {
    let name = unique_name("nocmd");
    let out = with_leak_check(&name, || {
        run_container(&name, &["--", "no-such-command-xyz"], None, LIMIT)
    });
    assert_eq!(out.status.code(), Some(127), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-command-xyz"),
        "stderr: {}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn no_command_at_all_is_127() {
    let out = run_with_limit(
        {
            let mut c = runv();
            c.args(["run", "--rm"]);
            c
        },
        None,
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("No command given"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn bad_rootfs_fails_before_any_vm_starts() {
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("missing");
    for (rootfs, message) in [
        (missing.display().to_string(), "does not exist"),
        (empty.path().display().to_string(), "is empty"),
    ] {
        let name = unique_name("rootfs");
        let start = Instant::now();
        let out = with_leak_check(&name, || {
            run_container(
                &name,
                &["--rootfs", &rootfs, "--", "true"],
                None,
                Duration::from_secs(10),
            )
        });
        assert_eq!(out.status.code(), Some(125), "stderr: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&rootfs) && stderr(&out).contains(message),
            "stderr: {}",
            stderr(&out)
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "rejected at once, took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn wrong_kernel_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[guest]\nkernel = \"/nonexistent/vmlinux\"\n");
    let name = unique_name("nokernel");
    let out = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.env("RUNV_CONFIG", &config)
            .args(["run", "--rm", "--name", &name, "--", "true"]);
        run_with_limit(cmd, None, Duration::from_secs(20))
    });
    assert_eq!(out.status.code(), Some(125), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("Guest kernel /nonexistent/vmlinux does not exist"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn guest_that_never_answers_times_out() {
    // A kernel that starts no agent: init is told to be a program that is not there, so the
    // guest never listens; runv must give up after its boot timeout, not hang.
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[hypervisor]\nkernel_params = \"rdinit=/no-agent-here panic=0\"\n[runtime]\nboot_timeout_ms = 8000\n",
    );
    let name = unique_name("noagent");
    let start = Instant::now();
    let out = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.env("RUNV_CONFIG", &config)
            .args(["run", "--rm", "--name", &name, "--", "true"]);
        run_with_limit(cmd, None, Duration::from_secs(60))
    });
    assert_eq!(out.status.code(), Some(125), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("did not answer within") || err.contains("stopped before its agent answered"),
        "stderr: {err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn without_rm_the_state_stays_until_removed() {
    let name = unique_name("keep");
    let out = run_with_limit(
        {
            let mut c = runv();
            c.args(["run", "--name", &name, "--", "sh", "-c", "exit 3"]);
            c
        },
        None,
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let list = run_with_limit(
        {
            let mut c = runv();
            c.args(["sandbox", "list", "--json"]);
            c
        },
        None,
        Duration::from_secs(10),
    );
    let json: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list --json");
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {json}"));
    assert_eq!(entry["live_status"], "stopped");
    assert_eq!(entry["containers"][0]["exit_status"], 3);
    assert!(
        processes_mentioning(&format!("{STATE_DIR}/{name}")).is_empty(),
        "the VM is gone"
    );
    let rm = run_with_limit(
        {
            let mut c = runv();
            c.args(["sandbox", "rm", &name]);
            c
        },
        None,
        Duration::from_secs(10),
    );
    assert_eq!(rm.status.code(), Some(0), "stderr: {}", stderr(&rm));
    assert_no_leaks(&name);
}

#[test]
fn guest_clock_follows_the_host() {
    let name = unique_name("clock");
    let out = with_leak_check(&name, || {
        run_container(&name, &["--", "date", "+%s"], None, LIMIT)
    });
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let guest: i64 = stdout(&out).trim().parse().expect("date +%s");
    let host = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(
        (host - guest).abs() < 120,
        "guest clock {guest}, host clock {host}"
    );
}

#[test]
fn interrupt_during_boot_leaves_nothing_behind() {
    let name = unique_name("intr");
    let status = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.args(["run", "--rm", "--name", &name, "--", "true"]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn runv");
        // Wait until the VM is being started, then interrupt.
        let start = Instant::now();
        while !processes_mentioning(&format!("runv-{name},"))
            .iter()
            .any(|p| p.contains("qemu"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "qemu never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) };
        child.wait().unwrap()
    });
    assert_eq!(status.code(), Some(130));
}
