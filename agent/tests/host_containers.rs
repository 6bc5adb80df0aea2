//! Runs real containers with the real `runv-agent --listen unix://...` on this host (as
//! root) and drives it with the generated ttrpc client.
//!
//! Each test starts its own agent with its own cgroup parent and a marker in every
//! container's environment, and checks at the end that no container process and no
//! cgroup directory is left.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_exit_status_and_separate_streams() {
    let (agent, client) = TestAgent::start("basic").await;
    let check = client.check(ctx(), &CheckRequest::new()).await.unwrap();
    assert_eq!(check.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!check.kernel_release.is_empty());
    assert!(check.uptime_seconds > 0.0);

    let sandbox = CreateSandboxRequest {
        sandbox_id: "sb".into(),
        hostname: "ignored-in-dev-mode".into(),
        ..Default::default()
    };
    client.create_sandbox(ctx(), &sandbox).await.unwrap();
    let err = client.create_sandbox(ctx(), &sandbox).await.unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);

    let spec = agent.spec(&["echo", "hi"]);
    assert_eq!(
        run(&client, &agent, "echo", &spec).await,
        (0, "hi\n".into(), String::new())
    );

    // Output of a process that has exited is read after the wait.
    let spec = agent.spec(&["echo", "late"]);
    create(&client, &agent, "late", &spec).await.unwrap();
    start(&client, "late").await.unwrap();
    assert_eq!(wait(&client, "late").await, (0, 0));
    assert_eq!(read_all(&client, "late", false).await, b"late\n");
    remove(&client, "late", 0).await.unwrap();

    let spec = agent.spec(&["sh", "-c", "exit 7"]);
    assert_eq!(run(&client, &agent, "exit7", &spec).await.0, 7);

    let spec = agent.spec(&["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        run(&client, &agent, "streams", &spec).await,
        (0, "out\n".into(), "err\n".into())
    );
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_signal_rules() {
    let (agent, client) = TestAgent::start("kill").await;
    let spec = agent.spec(&["sleep", "100"]);
    create(&client, &agent, "sleeper", &spec).await.unwrap();
    let pid = start(&client, "sleeper").await.unwrap();
    assert!(pid > 1);
    let err = start(&client, "sleeper").await.unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION, "{}", message(&err));

    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { wait(&client, "sleeper").await })
    };
    let signal = |sig: u32| SignalProcessRequest {
        container_id: "sleeper".into(),
        signal: sig,
        ..Default::default()
    };
    client.signal_process(ctx(), &signal(0)).await.unwrap();
    client.signal_process(ctx(), &signal(9)).await.unwrap();
    assert_eq!(waiter.await.unwrap(), (137, 9));
    // A second waiter after the exit gets the same status.
    assert_eq!(wait(&client, "sleeper").await, (137, 9));
    for sig in [0, 15] {
        let err = client
            .signal_process(ctx(), &signal(sig))
            .await
            .unwrap_err();
        assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    }
    let err = client
        .signal_process(ctx(), &signal(999))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    remove(&client, "sleeper", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trip_of_one_mib() {
    let (agent, client) = TestAgent::start("stdin").await;
    let spec = agent.spec(&["cat"]);
    create(&client, &agent, "cat", &spec).await.unwrap();
    start(&client, "cat").await.unwrap();
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let writer = {
        let client = client.clone();
        let data = data.clone();
        tokio::spawn(async move {
            for chunk in data.chunks(100_000) {
                let req = WriteStdinRequest {
                    container_id: "cat".into(),
                    data: chunk.to_vec(),
                    ..Default::default()
                };
                let resp = client.write_stdin(ctx(), &req).await.unwrap();
                assert_eq!(resp.written as usize, chunk.len());
            }
            client.close_stdin(ctx(), &process("cat")).await.unwrap();
        })
    };
    let out = read_all(&client, "cat", false).await;
    writer.await.unwrap();
    assert_eq!(wait(&client, "cat").await, (0, 0));
    assert_eq!(out.len(), data.len());
    assert!(out == data, "stdin came back altered");
    remove(&client, "cat", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_settings_take_effect() {
    let (agent, client) = TestAgent::start("settings").await;
    let script = "id -u; id -g; id -G; pwd; hostname; echo $$; ulimit -n; \
                  cat /proc/sys/kernel/shm_rmid_forced; cat /proc/self/oom_score_adj";
    let mut spec = agent.spec(&["sh", "-c", script]);
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 20]});
    spec["process"]["cwd"] = json!("/home/user");
    spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    spec["process"]["oomScoreAdj"] = json!(100);
    spec["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
    let (status, out, err) = run(&client, &agent, "settings", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "1000",
            "1000 20",
            "/home/user",
            "runv-test",
            "1",
            "123",
            "1",
            "100"
        ]
    );

    let mut spec = agent.spec(&["env"]);
    spec["process"]["env"] = json!([
        "PATH=/bin",
        "FOO=bar baz",
        format!("RUNV_TEST_MARK={}", agent.mark)
    ]);
    let (status, out, _) = run(&client, &agent, "env", &spec).await;
    assert_eq!(status, 0);
    let mut vars: Vec<&str> = out.lines().collect();
    vars.sort_unstable();
    let mark = format!("RUNV_TEST_MARK={}", agent.mark);
    assert_eq!(vars, ["FOO=bar baz", "PATH=/bin", mark.as_str()]);

    // Capabilities: root limited to two, and a user with an ambient one.
    let script = "grep -E '^Cap(Bnd|Eff)' /proc/self/status; mkdir -p /mnt; \
                  mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo denied";
    let mut spec = agent.spec(&["sh", "-c", script]);
    let two = json!(["CAP_CHOWN", "CAP_KILL"]);
    spec["process"]["capabilities"] = json!({
        "bounding": two, "effective": two, "permitted": two, "inheritable": two
    });
    let (status, out, err) = run(&client, &agent, "caps", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(
        out,
        "CapEff:\t0000000000000021\nCapBnd:\t0000000000000021\ndenied\n"
    );
    let mut spec = agent.spec(&["grep", "^CapAmb", "/proc/self/status"]);
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let bind = json!(["CAP_NET_BIND_SERVICE"]);
    spec["process"]["capabilities"] = json!({
        "bounding": bind, "effective": bind, "permitted": bind, "inheritable": bind,
        "ambient": bind
    });
    let (status, out, err) = run(&client, &agent, "ambient", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(out, "CapAmb:\t0000000000000400\n");

    // The root is read-only when the request asks for it; /tmp (a spec mount) stays writable.
    let spec = agent.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo rw || echo ro; touch /tmp/y && echo tmp-ok",
    ]);
    let req = CreateContainerRequest {
        container_id: "ro".into(),
        oci_spec_json: spec.to_string(),
        rootfs: Some(Rootfs {
            path: agent.rootfs.display().to_string(),
            readonly: true,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    client.create_container(ctx(), &req).await.unwrap();
    start(&client, "ro").await.unwrap();
    let out = read_all(&client, "ro", false).await;
    assert_eq!(wait(&client, "ro").await.0, 0);
    assert_eq!(String::from_utf8_lossy(&out), "ro\ntmp-ok\n");
    remove(&client, "ro", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_container() {
    let (agent, client) = TestAgent::start("tty").await;
    let mut spec = agent.spec(&["sh", "-c", "tty; stty size; read line; echo got:$line"]);
    spec["process"]["terminal"] = json!(true);
    spec["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    create(&client, &agent, "tty", &spec).await.unwrap();
    start(&client, "tty").await.unwrap();
    let resize = ResizeTerminalRequest {
        container_id: "tty".into(),
        rows: 40,
        cols: 120,
        ..Default::default()
    };
    client.resize_terminal(ctx(), &resize).await.unwrap();
    let write = WriteStdinRequest {
        container_id: "tty".into(),
        data: b"hello\n".to_vec(),
        ..Default::default()
    };
    client.write_stdin(ctx(), &write).await.unwrap();
    let (out, err) = tokio::join!(
        read_all(&client, "tty", false),
        read_all(&client, "tty", true)
    );
    assert_eq!(wait(&client, "tty").await.0, 0);
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert!(err.is_empty());
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out:?}");
    // The size is read either before or after the resize arrived.
    assert!(
        lines.contains(&"33 101") || lines.contains(&"40 120"),
        "{out:?}"
    );
    assert!(lines.contains(&"got:hello"), "{out:?}");
    remove(&client, "tty", 0).await.unwrap();

    // Output written before the process exited is still there when the reads come late.
    let mut spec = agent.spec(&["echo", "late reader"]);
    spec["process"]["terminal"] = json!(true);
    create(&client, &agent, "tty-late", &spec).await.unwrap();
    start(&client, "tty-late").await.unwrap();
    assert_eq!(wait(&client, "tty-late").await.0, 0);
    let out = read_all(&client, "tty-late", false).await;
    assert_eq!(String::from_utf8_lossy(&out), "late reader\r\n");
    remove(&client, "tty-late", 0).await.unwrap();

    // CloseStdin on a terminal sends EOF: cat ends.
    let mut spec = agent.spec(&["cat"]);
    spec["process"]["terminal"] = json!(true);
    create(&client, &agent, "tty-cat", &spec).await.unwrap();
    start(&client, "tty-cat").await.unwrap();
    client
        .close_stdin(ctx(), &process("tty-cat"))
        .await
        .unwrap();
    let _ = read_all(&client, "tty-cat", false).await;
    assert_eq!(wait(&client, "tty-cat").await.0, 0);
    remove(&client, "tty-cat", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_errors_have_codes() {
    let (agent, client) = TestAgent::start("errors").await;
    let spec = agent.spec(&["no-such-command"]);
    let err = create(&client, &agent, "missing", &spec).await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND, "{}", message(&err));
    assert!(
        message(&err).contains("executable file not found in $PATH: \"no-such-command\""),
        "{}",
        message(&err)
    );

    let spec = agent.spec(&["not-executable"]);
    let err = create(&client, &agent, "noexec", &spec).await.unwrap_err();
    assert_eq!(code(&err), Code::PERMISSION_DENIED, "{}", message(&err));

    let mut spec = agent.spec(&["true"]);
    spec["process"]["cwd"] = json!("/no/such/dir");
    let err = create(&client, &agent, "cwd", &spec).await.unwrap_err();
    assert!(message(&err).contains("/no/such/dir"), "{}", message(&err));

    let bad = CreateContainerRequest {
        container_id: "bad".into(),
        oci_spec_json: "{not json".into(),
        ..Default::default()
    };
    let err = client.create_container(ctx(), &bad).await.unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);

    let mut spec = agent.spec(&["true"]);
    spec.as_object_mut().unwrap().remove("process");
    let err = create(&client, &agent, "noprocess", &spec)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(message(&err).contains("process"), "{}", message(&err));

    let mut spec = agent.spec(&["true"]);
    spec["process"]["args"] = json!([]);
    let err = create(&client, &agent, "noargs", &spec).await.unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(message(&err).contains("process.args"), "{}", message(&err));

    let mut req = CreateContainerRequest {
        container_id: "norootfs".into(),
        oci_spec_json: agent.spec(&["true"]).to_string(),
        ..Default::default()
    };
    req.rootfs = Some(Rootfs {
        path: "/no/such/rootfs".into(),
        ..Default::default()
    })
    .into();
    let err = client.create_container(ctx(), &req).await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    assert!(message(&err).contains("/no/such/rootfs"));

    // Found and executable, but the exec itself fails: StartContainer reports it.
    let spec = agent.spec(&["garbage"]);
    create(&client, &agent, "garbage", &spec).await.unwrap();
    let err = start(&client, "garbage").await.unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
    assert!(message(&err).contains("/bin/garbage"), "{}", message(&err));
    assert_eq!(wait(&client, "garbage").await, (126, 0));
    remove(&client, "garbage", 0).await.unwrap();

    let spec = agent.spec(&["true"]);
    create(&client, &agent, "dup", &spec).await.unwrap();
    let err = create(&client, &agent, "dup", &spec).await.unwrap_err();
    assert_eq!(code(&err), Code::ALREADY_EXISTS);
    // Removing a created, never started container.
    remove(&client, "dup", 0).await.unwrap();

    let err = start(&client, "nobody").await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    let err = remove(&client, "nobody", 0).await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_running_container_then_shutdown() {
    let (mut agent, client) = TestAgent::start("remove").await;
    let spec = agent.spec(&["sh", "-c", "sleep 100 & sleep 100"]);
    create(&client, &agent, "running", &spec).await.unwrap();
    start(&client, "running").await.unwrap();
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { wait(&client, "running").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let begun = Instant::now();
    remove(&client, "running", 200).await.unwrap();
    assert!(begun.elapsed() < Duration::from_secs(5));
    // The shell is PID 1 of its namespace and ignores SIGTERM: SIGKILL ended it.
    assert_eq!(waiter.await.unwrap(), (137, 9));
    let err = client
        .wait_process(ctx(), &process("running"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    agent.assert_clean();

    // Shutdown kills what is left and ends the dev-mode agent with status 0.
    create(&client, &agent, "left", &agent.spec(&["sleep", "100"]))
        .await
        .unwrap();
    start(&client, "left").await.unwrap();
    client.shutdown(ctx(), &Empty::new()).await.unwrap();
    let mut child = agent.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after Shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_concurrently_without_blocking_each_other() {
    let (agent, client) = TestAgent::start("concurrent").await;
    // A reader blocked on a silent container must not hold up anything else.
    create(&client, &agent, "silent", &agent.spec(&["sleep", "100"]))
        .await
        .unwrap();
    start(&client, "silent").await.unwrap();
    let blocked = {
        let client = client.clone();
        tokio::spawn(async move { read_all(&client, "silent", false).await })
    };

    let agent = std::sync::Arc::new(agent);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        let agent = std::sync::Arc::clone(&agent);
        tasks.push(tokio::spawn(async move {
            let id = format!("quick{i}");
            let script = format!("echo {i}; exit {i}");
            let spec = agent.spec(&["sh", "-c", &script]);
            run(&client, &agent, &id, &spec).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, out, _) = task.await.unwrap();
        assert_eq!((status, out), (i32::try_from(i).unwrap(), format!("{i}\n")));
    }
    assert!(!blocked.is_finished());
    remove(&client, "silent", 0).await.unwrap();
    assert!(blocked.await.unwrap().is_empty());
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_processes_join_the_container() {
    let (agent, client) = TestAgent::start("exec").await;
    let spec = agent.spec(&["sleep", "100"]);
    create(&client, &agent, "box", &spec).await.unwrap();
    let process = |args: &[&str]| {
        json!({
            "args": args,
            "env": ["PATH=/bin", format!("RUNV_TEST_MARK={}", agent.mark)],
            "cwd": "/tmp",
            "user": {"uid": 1000, "gid": 1000}
        })
    };
    // Not started yet: no exec.
    let err = exec(&client, "box", "early", &process(&["true"]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION, "{}", message(&err));
    let init_pid = start(&client, "box").await.unwrap();

    let script = "echo $$; hostname; cat /proc/1/cmdline; echo; id -u; pwd; \
                  for ns in ipc uts mnt; do readlink /proc/self/ns/$ns; done; \
                  echo err >&2; exit 3";
    let pid = exec(&client, "box", "e1", &process(&["sh", "-c", script]))
        .await
        .unwrap();
    assert!(pid > 1 && pid != init_pid);
    let (out, err) = tokio::join!(
        read_exec(&client, "box", "e1", false),
        read_exec(&client, "box", "e1", true)
    );
    assert_eq!(wait_exec(&client, "box", "e1").await, 3);
    assert_eq!(err, "err\n");
    let lines: Vec<&str> = out.lines().collect();
    let ns = |kind: &str| {
        std::fs::read_link(format!("/proc/{init_pid}/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    let (ipc, uts, mnt) = (ns("ipc"), ns("uts"), ns("mnt"));
    assert_eq!(lines.len(), 8, "{out:?}");
    // In the container's pid namespace (not 1: that is the container's init).
    let inner_pid: u32 = lines[0].parse().unwrap();
    assert!(inner_pid > 1, "{out:?}");
    assert_eq!(
        &lines[1..],
        [
            "runv-test",
            "sleep\u{0}100\u{0}",
            "1000",
            "/tmp",
            ipc.as_str(),
            uts.as_str(),
            mnt.as_str()
        ]
    );
    client
        .remove_process(ctx(), &exec_process("box", "e1"))
        .await
        .unwrap();
    let err = client
        .wait_process(ctx(), &exec_process("box", "e1"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);

    // A running exec process is listed with its exec id; signals reach it alone.
    let pid = exec(&client, "box", "sleeper", &process(&["sleep", "100"]))
        .await
        .unwrap();
    let err = exec(&client, "box", "sleeper", &process(&["true"]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::ALREADY_EXISTS, "{}", message(&err));
    assert_eq!(
        listed_processes(&client, "box").await,
        [(init_pid, String::new()), (pid, "sleeper".to_string())]
    );
    let err = client
        .remove_process(ctx(), &exec_process("box", "sleeper"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    let kill = SignalProcessRequest {
        container_id: "box".into(),
        exec_id: "sleeper".into(),
        signal: 9,
        ..Default::default()
    };
    client.signal_process(ctx(), &kill).await.unwrap();
    assert_eq!(wait_exec(&client, "box", "sleeper").await, 137);
    // The container's init process is untouched.
    let probe = SignalProcessRequest {
        container_id: "box".into(),
        signal: 0,
        ..Default::default()
    };
    client.signal_process(ctx(), &probe).await.unwrap();

    // A missing program fails ExecProcess itself, naming it.
    let err = exec(&client, "box", "missing", &process(&["no-such-program"]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND, "{}", message(&err));
    assert!(
        message(&err).contains("no-such-program"),
        "{}",
        message(&err)
    );
    let err = exec(
        &client,
        "box",
        "bad",
        &json!({"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));

    // An exec process with a terminal of the asked size.
    let mut tty = process(&["sh", "-c", "tty; stty size"]);
    tty["terminal"] = json!(true);
    tty["consoleSize"] = json!({"height": 21, "width": 77});
    exec(&client, "box", "tty", &tty).await.unwrap();
    let out = read_exec(&client, "box", "tty", false).await;
    assert_eq!(wait_exec(&client, "box", "tty").await, 0);
    let out = out.replace('\r', "");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(lines[1], "21 77", "{out:?}");

    remove(&client, "box", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_containers_join_the_first_ones_namespaces() {
    let (agent, client) = TestAgent::start("pod").await;
    let mut pause = agent.spec(&["sleep", "100"]);
    pause["hostname"] = json!("pod-a");
    create(&client, &agent, "pause", &pause).await.unwrap();
    let pause_pid = start(&client, "pause").await.unwrap();

    let mut member = agent.spec(&[
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline; echo; readlink /proc/self/ns/ipc",
    ]);
    member.as_object_mut().unwrap().remove("hostname");
    member["linux"]["namespaces"] = json!([
        {"type": "pid", "path": format!("/proc/{pause_pid}/ns/pid")},
        {"type": "ipc", "path": format!("/proc/{pause_pid}/ns/ipc")},
        {"type": "uts", "path": format!("/proc/{pause_pid}/ns/uts")},
        {"type": "mount"}
    ]);
    let (status, out, err) = run(&client, &agent, "member", &member).await;
    assert_eq!(status, 0, "{err}");
    let ipc = std::fs::read_link(format!("/proc/{pause_pid}/ns/ipc")).unwrap();
    assert_eq!(
        out,
        format!("pod-a\nsleep\u{0}100\u{0}\n{}\n", ipc.display())
    );

    // A namespace path that is not there fails the create and leaves nothing.
    let mut bad = agent.spec(&["true"]);
    bad["linux"]["namespaces"] =
        json!([{"type": "mount"}, {"type": "ipc", "path": "/proc/999999999/ns/ipc"}]);
    let err = create(&client, &agent, "bad", &bad).await.unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
    assert!(
        message(&err).contains("/proc/999999999/ns/ipc"),
        "{}",
        message(&err)
    );
    let mut time = agent.spec(&["true"]);
    time["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "time"}]);
    let err = create(&client, &agent, "time", &time).await.unwrap_err();
    assert!(
        message(&err).contains("time namespaces"),
        "{}",
        message(&err)
    );

    remove(&client, "pause", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_stats_and_update() {
    let (agent, client) = TestAgent::start("freeze").await;
    let script = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; done";
    let spec = agent.spec(&["sh", "-c", script]);
    create(&client, &agent, "busy", &spec).await.unwrap();
    let pid = start(&client, "busy").await.unwrap();
    let count_file = format!("/proc/{pid}/root/tmp/count");
    let count = || -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = std::fs::read_to_string(&count_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return n;
            }
            assert!(Instant::now() < deadline, "no count in {count_file}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let req = ContainerRequest {
        container_id: "busy".into(),
        ..Default::default()
    };
    let first = count();
    client.pause_container(ctx(), &req).await.unwrap();
    let frozen = count();
    assert!(frozen >= first);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen, "the count moved while paused");
    let stats = client.stats_container(ctx(), &req).await.unwrap();
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    client.resume_container(ctx(), &req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() == frozen {
        assert!(
            Instant::now() < deadline,
            "the count did not move after resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Resources are parsed and checked; a bad one names the problem.
    let update = |json: &str| UpdateContainerRequest {
        container_id: "busy".into(),
        resources_json: json.into(),
        ..Default::default()
    };
    let err = client
        .update_container(ctx(), &update("{\"memory\": {\"limit\": \"x\"}}"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
    let err = client
        .update_container(
            ctx(),
            &update("{\"memory\": {\"limit\": 100, \"swap\": 50}}"),
        )
        .await
        .unwrap_err();
    assert!(message(&err).contains("memory.swap"), "{}", message(&err));
    let missing = UpdateContainerRequest {
        container_id: "nope".into(),
        resources_json: "{}".into(),
        ..Default::default()
    };
    let err = client.update_container(ctx(), &missing).await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);

    remove(&client, "busy", 0).await.unwrap();
    let err = client.pause_container(ctx(), &req).await.unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND);
    agent.assert_clean();
}
