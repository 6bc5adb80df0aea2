//! Device nodes from `linux.devices`, the cgroup v2 device program built from
//! `linux.resources.devices`, its live replacement, and what is refused, with the real
//! agent on this host (as root).
//!
//! The host's cgroup2 hierarchy may lack the memory or cpu controllers, but device
//! programs attach to any cgroup2 directory, so the rules are enforced here as in the
//! guest.

mod common;

use common::*;

/// `bpf(2)` commands used to look at what the agent attached.
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_DEVICE: u32 = 6;

/// `union bpf_attr` for BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live #[repr(C)] prefix of `union bpf_attr` for `cmd`, passed
    // with its size; the buffer it may point to outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The ids of the device programs attached to the cgroup directory `dir`.
fn attached_programs(dir: &Path) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir).unwrap();
    let mut ids = [0u32; 16];
    let mut attr = QueryAttr {
        target_fd: u32::try_from(file.as_raw_fd()).unwrap(),
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: 16,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).unwrap();
    ids[..usize::try_from(attr.prog_cnt).unwrap()].to_vec()
}

/// Whether the kernel still has a program with this id (the kernel frees it shortly
/// after its last reference goes).
fn program_exists(id: u32) -> bool {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    match bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            // SAFETY: closing the fd the kernel just returned to us.
            unsafe { libc::close(i32::try_from(fd).unwrap()) };
            true
        }
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => false,
        Err(err) => panic!("BPF_PROG_GET_FD_BY_ID {id}: {err}"),
    }
}

async fn program_freed(id: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !program_exists(id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Deny everything, then allow /dev/null and /dev/zero: what containerd's CRI sends for
/// an unprivileged container, plus `extra` rules.
fn deny_all_but_null_and_zero(extra: &[Value]) -> Value {
    let mut rules = vec![
        json!({"allow": false, "access": "rwm"}),
        json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}),
        json!({"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}),
    ];
    rules.extend(extra.iter().cloned());
    Value::Array(rules)
}

/// A spec with a /dev/kmsg node (c 1:11, not among the devices every container may use)
/// at /dev/test/kmsg, mode 0640, owned by 1000:1001.
fn spec_with_kmsg(agent: &TestAgent, args: &[&str], rules: Value) -> Value {
    let mut spec = agent.spec(args);
    spec["linux"]["devices"] = json!([{
        "path": "/dev/test/kmsg", "type": "c", "major": 1, "minor": 11,
        "fileMode": 0o640, "uid": 1000, "gid": 1001
    }]);
    spec["linux"]["resources"]["devices"] = rules;
    spec
}

/// Runs `script` with sh in the running container `id`; returns (status, stdout, stderr).
async fn exec_sh(
    client: &AgentClient,
    id: &str,
    exec_id: &str,
    script: &str,
) -> (i32, String, String) {
    let process = json!({
        "args": ["sh", "-c", script],
        "cwd": "/",
        "env": ["PATH=/bin:/usr/bin"],
        "user": {"uid": 0, "gid": 0}
    });
    exec(client, id, exec_id, &process).await.expect("exec");
    let (out, err, status) = tokio::join!(
        read_exec(client, id, exec_id, false),
        read_exec(client, id, exec_id, true),
        wait_exec(client, id, exec_id)
    );
    (status, out, err)
}

fn update(id: &str, resources: Value) -> UpdateContainerRequest {
    UpdateContainerRequest {
        container_id: id.into(),
        resources_json: resources.to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_devices_are_created_and_device_rules_enforced() {
    let (agent, client) = TestAgent::start("devnodes").await;
    let script = "ls -ln /dev/test/kmsg; \
                  head -c1 /dev/zero | wc -c; \
                  echo x > /dev/null && echo null-ok; \
                  true < /dev/test/kmsg && echo kmsg-opened";
    let spec = spec_with_kmsg(
        &agent,
        &["sh", "-c", script],
        deny_all_but_null_and_zero(&[]),
    );
    let (status, out, err) = run(&client, &agent, "nodes", &spec).await;
    assert_eq!(status, 1, "stdout: {out}\nstderr: {err}");
    let mut lines = out.lines();
    // crw-r-----    1 1000     1001        1,  11 Nov 22 08:00 /dev/test/kmsg
    let ls: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(ls.first(), Some(&"crw-r-----"), "{out}");
    assert_eq!(&ls[2..6], ["1000", "1001", "1,", "11"], "{out}");
    assert_eq!(lines.next(), Some("1"), "{out}");
    assert_eq!(lines.next(), Some("null-ok"), "{out}");
    assert_eq!(lines.next(), None, "{out}");
    assert!(
        err.contains("/dev/test/kmsg") && err.contains("Operation not permitted"),
        "{err}"
    );

    // Without device rules a container still gets only the default devices.
    let spec = spec_with_kmsg(
        &agent,
        &[
            "sh",
            "-c",
            "cat /dev/null && head -c1 /dev/urandom | wc -c && true < /dev/test/kmsg",
        ],
        Value::Null,
    );
    let (status, out, err) = run(&client, &agent, "defaults", &spec).await;
    assert_eq!((status, out.as_str()), (1, "1\n"), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // An allow-all rule lets everything through.
    let spec = spec_with_kmsg(
        &agent,
        &["sh", "-c", "true < /dev/test/kmsg && echo opened"],
        json!([{"allow": true, "access": "rwm"}]),
    );
    let (status, out, err) = run(&client, &agent, "all", &spec).await;
    assert_eq!((status, out.as_str()), (0, "opened\n"), "{err}");
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_update_replaces_the_device_program() {
    let (agent, client) = TestAgent::start("devupdate").await;
    let spec = spec_with_kmsg(&agent, &["sleep", "100"], deny_all_but_null_and_zero(&[]));
    create(&client, &agent, "dev", &spec).await.unwrap();
    let cgroup = agent.cgroup_parent.join("runv").join("dev");
    let first = attached_programs(&cgroup);
    assert_eq!(first.len(), 1, "{first:?}");
    start(&client, "dev").await.unwrap();

    let open = "true < /dev/test/kmsg && echo opened";
    let (status, out, err) = exec_sh(&client, "dev", "e1", open).await;
    assert_eq!((status, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    let read_kmsg = json!({"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"});
    client
        .update_container(
            ctx(),
            &update(
                "dev",
                json!({"devices": deny_all_but_null_and_zero(&[read_kmsg])}),
            ),
        )
        .await
        .unwrap();
    let second = attached_programs(&cgroup);
    assert_eq!(second.len(), 1, "old program still attached: {second:?}");
    assert_ne!(second, first);
    assert!(program_freed(first[0]).await, "program {} leaked", first[0]);
    let (status, out, err) = exec_sh(&client, "dev", "e2", open).await;
    assert_eq!((status, out.as_str()), (0, "opened\n"), "{err}");
    // Only read was allowed.
    let (status, _, err) = exec_sh(&client, "dev", "e3", "echo x > /dev/test/kmsg").await;
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // A bad rule is refused by name and leaves the program as it was.
    let bad = json!({"devices": [{"allow": false}, {"allow": true, "type": "c", "access": "rwx"}]});
    let err = client
        .update_container(ctx(), &update("dev", bad))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
    assert!(
        message(&err).contains("linux.resources.devices[1].access"),
        "{}",
        message(&err)
    );
    assert_eq!(attached_programs(&cgroup), second);
    // An update without device rules keeps them.
    client
        .update_container(ctx(), &update("dev", json!({"pids": {"limit": 32}})))
        .await
        .unwrap();
    assert_eq!(attached_programs(&cgroup), second);

    remove(&client, "dev", 0).await.unwrap();
    assert!(!cgroup.exists());
    assert!(
        program_freed(second[0]).await,
        "program {} leaked",
        second[0]
    );
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_devices_and_resources_are_refused_before_anything_is_made() {
    let (agent, client) = TestAgent::start("devbad").await;
    let cases = [
        (
            json!({"devices": [{"path": "/etc/evil", "type": "c", "major": 1, "minor": 3}]}),
            "linux.devices[0].path",
        ),
        (
            json!({"devices": [
                {"path": "/dev/ok", "type": "c", "major": 1, "minor": 3},
                {"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}]}),
            "linux.devices[1].path",
        ),
        (
            json!({"resources": {"devices": [{"allow": false},
                                             {"allow": true, "type": "c", "major": 9000}]}}),
            "linux.resources.devices[1].major",
        ),
        (
            json!({"resources": {"memory": {"swappiness": 10}}}),
            "linux.resources.memory.swappiness",
        ),
        (
            json!({"resources": {"unified": {"../escape": "1"}}}),
            "linux.resources.unified[\"../escape\"]",
        ),
    ];
    for (linux, field) in cases {
        let mut spec = agent.spec(&["true"]);
        for (key, value) in linux.as_object().unwrap() {
            spec["linux"][key] = value.clone();
        }
        let err = create(&client, &agent, "bad", &spec).await.unwrap_err();
        assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
        assert!(message(&err).contains(field), "{field}: {}", message(&err));
        agent.assert_clean();
    }

    // A unified file that does not exist is refused at create, and its cgroup removed.
    let mut spec = agent.spec(&["true"]);
    spec["linux"]["resources"]["unified"] = json!({"nosuch.file": "1"});
    let err = create(&client, &agent, "bad", &spec).await.unwrap_err();
    assert!(
        message(&err).contains("linux.resources.unified[\"nosuch.file\"]"),
        "{}",
        message(&err)
    );
    agent.assert_clean();

    // One that exists is written as given.
    let mut spec = agent.spec(&["true"]);
    spec["linux"]["resources"]["unified"] = json!({"cgroup.max.depth": "3"});
    create(&client, &agent, "unified", &spec).await.unwrap();
    let depth = agent.cgroup_parent.join("runv/unified/cgroup.max.depth");
    assert_eq!(std::fs::read_to_string(depth).unwrap().trim(), "3");
    remove(&client, "unified", 0).await.unwrap();
    agent.assert_clean();
}
