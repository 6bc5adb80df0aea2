//! `runv check`, `runv sandbox list`, and configuration errors, against the real install.

use std::time::Duration;

use runv_tests::*;

#[test]
fn check_reports_the_host_and_the_choice() {
    let out = run_with_limit(
        {
            let mut c = runv();
            c.args(["check", "--json"]);
            c
        },
        None,
        Duration::from_secs(20),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert_eq!(report["can_run"], true);
    let kvm_kind = report["kvm"]["kind"].as_str().unwrap().to_string();
    let expected_kind = if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "pvm"
    } else if std::path::Path::new("/dev/kvm").exists() {
        "hardware"
    } else {
        "absent"
    };
    assert_eq!(kvm_kind, expected_kind, "{report}");
    if kvm_kind != "hardware" {
        assert_eq!(report["hypervisor"], "qemu", "{report}");
        assert_eq!(report["accel"], "tcg", "{report}");
    }
    for item in [
        "qemu",
        "virtiofsd",
        "vhost-device-vsock",
        "guest kernel",
        "guest initramfs",
    ] {
        let entry = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == item);
        assert_eq!(
            entry.map(|e| e["ok"].clone()),
            Some(serde_json::Value::Bool(true)),
            "{item}: {report}"
        );
    }
}

#[test]
fn check_fails_with_the_reason_when_runv_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[guest]\ninitrd = \"/nonexistent/initrd.img\"\n",
    );
    let out = run_with_limit(
        {
            let mut c = runv();
            c.env("RUNV_CONFIG", &config).arg("check");
            c
        },
        None,
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("/nonexistent/initrd.img missing"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("runv cannot run"), "{}", stdout(&out));
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "[hypervisor]\nvcpu = 2\n");
    let out = run_with_limit(
        {
            let mut c = runv();
            c.env("RUNV_CONFIG", &config)
                .args(["run", "--rm", "--", "true"]);
            c
        },
        None,
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("vcpu"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&config.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sandbox_list_shows_a_running_sandbox() {
    let name = unique_name("list");
    with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.args([
            "run",
            "--rm",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo trap-set; while :; do sleep 0.1; done",
        ]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn runv");
        let entry = wait_until_started(&name, &mut child, Duration::from_secs(90));
        // The init of a pid namespace ignores SIGTERM until its handler is set: wait for it.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("read the container's output");
        assert_eq!(line, "trap-set\n");
        assert_eq!(entry["live_status"], "running", "{entry}");
        let names: Vec<&str> = entry["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"qemu") && names.contains(&"virtiofsd"),
            "{entry}"
        );
        for p in entry["processes"].as_array().unwrap() {
            let pid = p["pid"].as_u64().unwrap();
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{p} runs"
            );
        }
        let text = run_with_limit(
            {
                let mut c = runv();
                c.args(["sandbox", "list"]);
                c
            },
            None,
            Duration::from_secs(10),
        );
        assert!(
            stdout(&text)
                .lines()
                .any(|l| l.starts_with(&name) && l.contains("running")),
            "{}",
            stdout(&text)
        );
        // SIGTERM reaches the container through runv; its trap exits 42.
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(42));
    });
}
