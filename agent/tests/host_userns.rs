//! Containers in user namespaces, with the real `runv-agent` on this host (as root): id
//! mappings, the default mounts and the hostname inside the namespace, exec processes and
//! pod containers joining it, and bad mappings refused without leftovers.

mod common;

use common::*;

/// Host (here: guest) ids the container's 0-65535 map to.
const BASE: u32 = 100_000;
const SIZE: u32 = 65_536;

/// The harness's spec in a new user namespace mapping container ids 0-65535 to
/// BASE-BASE+65535.
fn userns_spec(agent: &TestAgent, args: &[&str]) -> Value {
    let mut spec = agent.spec(args);
    let maps = json!([{"containerID": 0, "hostID": BASE, "size": SIZE}]);
    spec["linux"]["uidMappings"] = maps.clone();
    spec["linux"]["gidMappings"] = maps;
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    spec
}

/// The numbers of a uid_map or gid_map, one line per range.
fn map_numbers(text: &str) -> Vec<Vec<u64>> {
    text.lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect()
}

/// The real, effective, saved and filesystem ids of `pid` from its status, seen from here.
fn status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"));
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

/// A tmpfs mounted on this host for the length of a test.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(path: &Path, options: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", path.display());
        Self(path.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn ns_link(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_in_the_container_is_an_unprivileged_id_outside() {
    let (agent, client) = TestAgent::start("userns-root").await;
    let script = "id -u; id -g; echo; cat /proc/self/uid_map; echo; cat /proc/self/gid_map; \
                  echo; hostname; echo; cat /proc/self/mounts; echo; ls /sys/kernel >/dev/null \
                  && echo sys-readable; touch /sys/x 2>/dev/null || echo sys-read-only; \
                  echo hi > /dev/shm/f && cat /dev/shm/f; echo hi > /dev/null && echo null-ok";
    let spec = userns_spec(&agent, &["sh", "-c", script]);
    let (status, out, err) = run(&client, &agent, "init", &spec).await;
    assert_eq!(status, 0, "{err}");
    let parts: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(parts.len(), 6, "{out:?}");
    assert_eq!(parts[0], "0\n0", "{out:?}");
    let expected = vec![vec![0, u64::from(BASE), u64::from(SIZE)]];
    assert_eq!(map_numbers(parts[1]), expected, "{out:?}");
    assert_eq!(map_numbers(parts[2]), expected, "{out:?}");
    assert_eq!(parts[3], "runv-test");
    let mounts: Vec<Vec<&str>> = parts[4].lines().map(|l| l.split(' ').collect()).collect();
    for (point, fstype) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
        ("/tmp", "tmpfs"),
    ] {
        assert!(
            mounts.iter().any(|m| m[1] == point && m[2] == fstype),
            "no {fstype} on {point} in {}",
            parts[4]
        );
    }
    let sys = mounts.iter().find(|m| m[1] == "/sys").unwrap();
    assert!(sys[3].split(',').any(|o| o == "ro"), "{sys:?}");
    assert_eq!(
        parts[5], "sys-readable\nsys-read-only\nhi\nnull-ok\n",
        "{out:?}"
    );

    // A read-only bind of a nosuid,nodev,noexec mount keeps those flags (locked in the
    // user namespace: dropping them on the remount would be refused).
    let source = agent.dir.join("locked");
    std::fs::create_dir_all(&source).unwrap();
    let _unmount = TmpfsMount::new(&source, "nosuid,nodev,noexec,mode=755");
    std::fs::write(source.join("f"), "data\n").unwrap();
    let mut spec = userns_spec(
        &agent,
        &[
            "sh",
            "-c",
            "cat /work/f; touch /work/g 2>/dev/null || echo read-only; \
                       grep ' /work ' /proc/self/mounts",
        ],
    );
    spec["mounts"].as_array_mut().unwrap().push(json!(
        {"destination": "/work", "type": "bind", "source": source, "options": ["rbind", "ro"]}
    ));
    let (status, out, err) = run(&client, &agent, "bind", &spec).await;
    assert_eq!(status, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["data", "read-only"], "{out}");
    let options: Vec<&str> = lines[2].split(' ').nth(3).unwrap().split(',').collect();
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(options.contains(&flag), "{out}");
    }

    // Seen from outside, the container's root is uid BASE; capabilities in the user
    // namespace give nothing outside it.
    let spec = userns_spec(&agent, &["sleep", "100"]);
    create(&client, &agent, "sleeper", &spec).await.unwrap();
    let pid = start(&client, "sleeper").await.unwrap();
    assert_eq!(status_ids(pid, "Uid"), [BASE; 4]);
    assert_eq!(status_ids(pid, "Gid"), [BASE; 4]);
    assert_ne!(ns_link(pid, "user"), ns_link(std::process::id(), "user"));
    remove(&client, "sleeper", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_user_and_exec_processes_in_the_user_namespace() {
    let (agent, client) = TestAgent::start("userns-exec").await;
    let mut spec = userns_spec(&agent, &["sleep", "100"]);
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
    create(&client, &agent, "box", &spec).await.unwrap();
    let init_pid = start(&client, "box").await.unwrap();
    assert_eq!(status_ids(init_pid, "Uid"), [BASE + 1000; 4]);
    assert_eq!(status_ids(init_pid, "Gid"), [BASE + 1000; 4]);
    let groups = std::fs::read_to_string(format!("/proc/{init_pid}/status")).unwrap();
    assert!(
        groups
            .lines()
            .any(|l| l == format!("Groups:\t{} ", BASE + 5)),
        "{groups}"
    );

    let process = |user: Value, args: &[&str]| {
        json!({
            "args": args,
            "env": ["PATH=/bin", format!("RUNV_TEST_MARK={}", agent.mark)],
            "cwd": "/",
            "user": user
        })
    };
    let script = "id -u; id -G; readlink /proc/self/ns/user; readlink /proc/self/ns/mnt; hostname";
    for (exec_id, uid, terminal) in [("as-user", 1000, false), ("as-root", 0, true)] {
        let mut p = process(json!({"uid": uid, "gid": uid}), &["sh", "-c", script]);
        p["terminal"] = json!(terminal);
        let pid = exec(&client, "box", exec_id, &p).await.unwrap();
        assert_eq!(status_ids(pid, "Uid")[0], BASE + uid);
        let out = read_exec(&client, "box", exec_id, false).await;
        assert_eq!(wait_exec(&client, "box", exec_id).await, 0, "{out}");
        let out = out.replace('\r', "");
        assert_eq!(
            out,
            format!(
                "{uid}\n{uid}\n{}\n{}\nrunv-test\n",
                ns_link(init_pid, "user"),
                ns_link(init_pid, "mnt")
            )
        );
    }
    // An exec user outside the mapping fails the exec, naming the id.
    let err = exec(
        &client,
        "box",
        "unmapped",
        &process(json!({"uid": 70000, "gid": 0}), &["true"]),
    )
    .await
    .unwrap_err();
    assert!(message(&err).contains("setuid 70000"), "{}", message(&err));
    remove(&client, "box", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_container_joins_the_first_ones_user_namespace() {
    let (agent, client) = TestAgent::start("userns-pod").await;
    let mut pause = userns_spec(&agent, &["sleep", "100"]);
    pause["hostname"] = json!("pod-a");
    create(&client, &agent, "pause", &pause).await.unwrap();
    let pause_pid = start(&client, "pause").await.unwrap();

    let script = "id -u; readlink /proc/self/ns/user; hostname; cat /proc/1/cmdline; echo; \
                  hostname pod-b && hostname; grep -c ' /dev/mqueue mqueue ' /proc/self/mounts";
    let mut member = agent.spec(&["sh", "-c", script]);
    member["hostname"] = json!("pod-b0");
    member["linux"]["namespaces"] = json!([
        {"type": "user", "path": format!("/proc/{pause_pid}/ns/user")},
        {"type": "pid", "path": format!("/proc/{pause_pid}/ns/pid")},
        {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "cgroup"}
    ]);
    create(&client, &agent, "member", &member).await.unwrap();
    let member_pid = start(&client, "member").await.unwrap();
    assert_eq!(status_ids(member_pid, "Uid"), [BASE; 4]);
    let (out, err, (status, _)) = tokio::join!(
        read_all(&client, "member", false),
        read_all(&client, "member", true),
        wait(&client, "member")
    );
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "0\n{}\npod-b0\nsleep\u{0}100\u{0}\npod-b\n1\n",
            ns_link(pause_pid, "user")
        )
    );
    remove(&client, "member", 0).await.unwrap();
    // The member's hostname was its own uts namespace's.
    let p = json!({"args": ["hostname"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                   "env": [format!("RUNV_TEST_MARK={}", agent.mark)]});
    exec(&client, "pause", "hostname", &p).await.unwrap();
    assert_eq!(
        read_exec(&client, "pause", "hostname", false).await,
        "pod-a
"
    );
    assert_eq!(wait_exec(&client, "pause", "hostname").await, 0);

    // Mappings for a joined user namespace may repeat its own (containerd gives them),
    // nothing else.
    let mut mapped = member.clone();
    mapped["process"]["args"] = json!(["id", "-u"]);
    mapped["linux"]["uidMappings"] = pause["linux"]["uidMappings"].clone();
    mapped["linux"]["gidMappings"] = pause["linux"]["gidMappings"].clone();
    assert_eq!(
        run(&client, &agent, "mapped", &mapped).await,
        (0, "0\n".into(), String::new())
    );
    mapped["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": BASE, "size": 1}]);
    let err = create(&client, &agent, "mapped", &mapped)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
    assert!(
        message(&err).contains(&format!(
            "linux.uidMappings: differ from those of the joined user namespace \
             /proc/{pause_pid}/ns/user (0 {BASE} {SIZE})"
        )),
        "{}",
        message(&err)
    );
    remove(&client, "pause", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mappings_are_refused_naming_the_field() {
    let (agent, client) = TestAgent::start("userns-bad").await;
    let with = |uids: Value, gids: Value| {
        let mut spec = userns_spec(&agent, &["true"]);
        spec["linux"]["uidMappings"] = uids;
        spec["linux"]["gidMappings"] = gids;
        spec
    };
    let good = json!([{"containerID": 0, "hostID": BASE, "size": SIZE}]);
    let cases = [
        (
            with(
                json!([{"containerID": 0, "hostID": BASE, "size": 10},
                       {"containerID": 5, "hostID": 300000, "size": 10}]),
                good.clone(),
            ),
            "linux.uidMappings[1]: container ids overlap those of linux.uidMappings[0]",
        ),
        (
            with(
                good.clone(),
                json!([{"containerID": 0, "hostID": BASE, "size": 0}]),
            ),
            "linux.gidMappings[0]: size is 0",
        ),
        (
            with(good.clone(), json!([])),
            "linux.gidMappings: a new user namespace needs at least one mapping",
        ),
    ];
    for (spec, expected) in cases {
        let err = create(&client, &agent, "bad", &spec).await.unwrap_err();
        assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
        assert!(message(&err).contains(expected), "{}", message(&err));
    }
    let mut no_userns = agent.spec(&["true"]);
    no_userns["linux"]["uidMappings"] = good.clone();
    let err = create(&client, &agent, "bad", &no_userns)
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("linux.uidMappings: id mappings need a user namespace"),
        "{}",
        message(&err)
    );
    let mut unmapped_user = userns_spec(&agent, &["true"]);
    unmapped_user["process"]["user"] = json!({"uid": SIZE, "gid": 0});
    let err = create(&client, &agent, "bad", &unmapped_user)
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("process.user.uid: 65536 is not mapped"),
        "{}",
        message(&err)
    );
    // Nothing of the refused containers is left, and the id can be used.
    agent.assert_clean();
    let spec = userns_spec(&agent, &["true"]);
    assert_eq!(run(&client, &agent, "bad", &spec).await.0, 0);
    agent.assert_clean();
}
