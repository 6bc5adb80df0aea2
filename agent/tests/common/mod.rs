//! The harness of the agent host tests: a real `runv-agent` on this host (as root), a
//! busybox rootfs, and helpers for the ttrpc calls the tests make.

// Each test file uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Stdio};
pub use std::time::{Duration, Instant};

pub use runv_agent_protocol::agent::{
    CheckRequest, ContainerRequest, CreateContainerRequest, CreateSandboxRequest, Empty,
    ExecProcessRequest, Interface, IpAddress, Network, ProcessRequest, ReadStreamRequest,
    RemoveContainerRequest, ResizeTerminalRequest, Rootfs, Route, SignalProcessRequest,
    UpdateContainerRequest, WriteStdinRequest,
};
pub use runv_agent_protocol::agent_ttrpc::AgentClient;
pub use serde_json::{json, Value};
pub use ttrpc::Code;

pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "sleep", "pwd", "hostname", "tty", "stty", "env", "true", "false",
    "ls", "head", "wc", "kill", "ps", "mount", "touch", "grep", "mkdir", "readlink",
];

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

pub fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        unified.to_path_buf()
    } else {
        unified.join("unified")
    }
}

/// One agent under test, with its directory, rootfs and cgroup parent. Dropping it stops
/// the agent and removes what the test made.
pub struct TestAgent {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub socket: String,
    pub cgroup_parent: PathBuf,
    pub mark: String,
}

impl TestAgent {
    pub async fn start(name: &str) -> (Self, AgentClient) {
        Self::start_wrapped(name, &[]).await
    }

    /// Like [`Self::start`], with the agent in the network namespace `ip netns` named
    /// `netns` (`nsenter`, which execs the agent, so the child's pid stays the agent's; unlike
    /// `ip netns exec` it leaves /sys, and so the cgroup hierarchy, as it is).
    pub async fn start_in_netns(name: &str, netns: &str) -> (Self, AgentClient) {
        let net = format!("--net=/run/netns/{netns}");
        Self::start_wrapped(name, &["nsenter", &net]).await
    }

    async fn start_wrapped(name: &str, wrapper: &[&str]) -> (Self, AgentClient) {
        let tag = format!("runv-agent-test-{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs);
        let socket_path = dir.join("agent.sock");
        let cgroup_parent = cgroup2_root().join(&tag);
        let agent_bin = env!("CARGO_BIN_EXE_runv-agent");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent_bin);
                c
            }
            None => Command::new(agent_bin),
        };
        let child = command
            .arg("--listen")
            .arg(format!("unix://{}", socket_path.display()))
            .arg("--cgroup-root")
            .arg(&cgroup_parent)
            .arg("--log")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("agent.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::inherit()),
            )
            .spawn()
            .expect("start runv-agent");
        let agent = Self {
            child: Some(child),
            dir,
            rootfs,
            socket: format!("unix://{}", socket_path.display()),
            cgroup_parent,
            mark: tag,
        };
        let client = agent.connect().await;
        (agent, client)
    }

    pub async fn connect(&self) -> AgentClient {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ttrpc::r#async::Client::connect(&self.socket).await {
                Ok(client) => return AgentClient::new(client),
                Err(err) if Instant::now() > deadline => panic!("connect {}: {err}", self.socket),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// A spec running `args` in the test rootfs.
    pub fn spec(&self, args: &[&str]) -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin:/usr/bin", format!("RUNV_TEST_MARK={}", self.mark)],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": self.rootfs, "readonly": false},
            "hostname": "runv-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "mode=1777"]}
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "cgroup"}
                ],
                "resources": {"pids": {"limit": 64}, "memory": {"limit": 268435456}},
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }

    /// Asserts that nothing of any container is left: no process with this test's marker
    /// and no cgroup below the agent's parent.
    pub fn assert_clean(&self) {
        let leftovers = marked_processes(&self.mark);
        assert!(
            leftovers.is_empty(),
            "container processes left: {leftovers:?}"
        );
        let runv = self.cgroup_parent.join("runv");
        let dirs: Vec<_> = std::fs::read_dir(&runv)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(dirs.is_empty(), "cgroups left: {dirs:?}");
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM makes the dev-mode agent remove its containers before it exits.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill() with a pid we spawned and a valid signal number.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir(self.cgroup_parent.join("runv"));
        let _ = std::fs::remove_dir(&self.cgroup_parent);
        if std::env::var_os("RUNV_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn build_rootfs(rootfs: &Path) {
    for dir in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "home/user",
        "work",
    ] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy /bin/busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("bin/not-executable"), "#!/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("bin/garbage"), "neither ELF nor script\n").unwrap();
    std::fs::set_permissions(
        rootfs.join("bin/garbage"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

pub fn marked_processes(mark: &str) -> Vec<String> {
    let needle = format!("RUNV_TEST_MARK={mark}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

pub fn code(err: &ttrpc::Error) -> Code {
    match err {
        ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("not a status: {other:?}"),
    }
}

pub fn message(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(status) => status.message().to_string(),
        other => format!("{other:?}"),
    }
}

pub async fn create(
    client: &AgentClient,
    agent: &TestAgent,
    id: &str,
    spec: &Value,
) -> ttrpc::Result<Empty> {
    let req = CreateContainerRequest {
        container_id: id.to_string(),
        oci_spec_json: spec.to_string(),
        rootfs: Some(Rootfs {
            path: agent.rootfs.display().to_string(),
            readonly: false,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    client.create_container(ctx(), &req).await
}

pub async fn start(client: &AgentClient, id: &str) -> ttrpc::Result<u32> {
    let req = ContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    client.start_container(ctx(), &req).await.map(|r| r.pid)
}

pub fn process(id: &str) -> ProcessRequest {
    ProcessRequest {
        container_id: id.to_string(),
        ..Default::default()
    }
}

pub async fn wait(client: &AgentClient, id: &str) -> (i32, i32) {
    let resp = client.wait_process(ctx(), &process(id)).await.unwrap();
    (resp.exit_status, resp.signal)
}

pub async fn read_all(client: &AgentClient, id: &str, stderr: bool) -> Vec<u8> {
    let req = ReadStreamRequest {
        container_id: id.to_string(),
        max_len: 64 * 1024,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let resp = if stderr {
            client.read_stderr(ctx(), &req).await
        } else {
            client.read_stdout(ctx(), &req).await
        }
        .unwrap();
        if resp.data.is_empty() {
            return out;
        }
        out.extend_from_slice(&resp.data);
    }
}

pub async fn remove(client: &AgentClient, id: &str, timeout_ms: u32) -> ttrpc::Result<Empty> {
    let req = RemoveContainerRequest {
        container_id: id.to_string(),
        timeout_ms,
        ..Default::default()
    };
    client.remove_container(ctx(), &req).await
}

/// Creates, starts and waits for a container; returns (exit status, stdout, stderr).
pub async fn run(
    client: &AgentClient,
    agent: &TestAgent,
    id: &str,
    spec: &Value,
) -> (i32, String, String) {
    create(client, agent, id, spec).await.expect("create");
    start(client, id).await.expect("start");
    let (out, err, (status, _)) = tokio::join!(
        read_all(client, id, false),
        read_all(client, id, true),
        wait(client, id)
    );
    remove(client, id, 0).await.expect("remove");
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

pub fn exec_process(id: &str, exec_id: &str) -> ProcessRequest {
    ProcessRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        ..Default::default()
    }
}

pub async fn exec(
    client: &AgentClient,
    id: &str,
    exec_id: &str,
    process: &Value,
) -> ttrpc::Result<u32> {
    let req = ExecProcessRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        process_json: process.to_string(),
        ..Default::default()
    };
    client.exec_process(ctx(), &req).await.map(|r| r.pid)
}

pub async fn read_exec(client: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> String {
    let req = ReadStreamRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        max_len: 64 * 1024,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let resp = if stderr {
            client.read_stderr(ctx(), &req).await
        } else {
            client.read_stdout(ctx(), &req).await
        }
        .unwrap();
        if resp.data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&resp.data);
    }
}

pub async fn wait_exec(client: &AgentClient, id: &str, exec_id: &str) -> i32 {
    client
        .wait_process(ctx(), &exec_process(id, exec_id))
        .await
        .unwrap()
        .exit_status
}

pub async fn listed_processes(client: &AgentClient, id: &str) -> Vec<(u32, String)> {
    let req = ContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let mut list: Vec<(u32, String)> = client
        .list_processes(ctx(), &req)
        .await
        .unwrap()
        .processes
        .into_iter()
        .map(|p| (p.pid, p.exec_id))
        .collect();
    list.sort();
    list
}
