//! Section 3: container create+start latency of runv-agent against runc and crun. All three
//! run natively on this host, from the same root and the same spec: the agent in its
//! development mode (a Unix socket instead of vsock, containers in a cgroup v2 subtree of its
//! own), so a guest under software emulation does not skew the comparison. Section 1 has the
//! same two phases as the guest runs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use runv_agent_protocol::agent::ContainerRequest;
use runv_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, ProcessRequest, RemoveContainerRequest, Rootfs,
};
use runv_agent_protocol::agent_ttrpc::AgentClient;
use serde_json::{json, Value};

use crate::procs::{on_path, timed};
use crate::report::Report;
use crate::Options;

const SECTION: &str = "3 create+start";
pub const BUSYBOX_ROOT: &str = "/usr/local/share/runv/rootfs/busybox";

/// The spec all three get: `true` in the busybox root, read-only, with the mounts, namespaces
/// and limits a typical container has.
pub fn spec(root: &Path, cgroups_path: &str) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"],
                "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"],
                "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": root, "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}
            ],
            "cgroupsPath": cgroups_path,
            "resources": {"pids": {"limit": 64}, "memory": {"limit": 268435456}},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

fn cgroup2_root() -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join("unified")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One OCI runtime binary (runc, crun): `create` + `start` timed, then the container waited
/// for and deleted.
fn oci_runtime_once(bin: &str, state: &Path, bundle: &Path, id: &str) -> Result<f64> {
    let root = state.display().to_string();
    let bundle_arg = bundle.display().to_string();
    // The container inherits create's stdio: a pipe would stay open until it exits, so its
    // output goes to a file, which also holds create's own errors.
    let errors = bundle.join("create.err");
    let start_create = Instant::now();
    let status = Command::new(bin)
        .args(["--root", &root, "create", "--bundle", &bundle_arg, id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors)?)
        .status()
        .with_context(|| format!("start {bin} create"))?;
    let create = start_create.elapsed();
    if !status.success() {
        bail!(
            "{bin} create failed ({status}): {}",
            std::fs::read_to_string(&errors).unwrap_or_default().trim()
        );
    }
    let (_, start) = timed(
        &format!("{bin} start"),
        Command::new(bin).args(["--root", &root, "start", id]),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(bin)
            .args(["--root", &root, "state", id])
            .output()
            .with_context(|| format!("{bin} state"))?;
        let stopped = serde_json::from_slice::<Value>(&out.stdout)
            .map(|v| v["status"] == "stopped")
            .unwrap_or(false);
        if stopped {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new(bin)
                .args(["--root", &root, "delete", "--force", id])
                .status();
            bail!("{bin}: container {id} did not stop");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    timed(
        &format!("{bin} delete"),
        Command::new(bin).args(["--root", &root, "delete", id]),
    )?;
    Ok(ms(create + start))
}

/// The agent under test, stopped (and its cgroup parent removed) when dropped.
struct Agent {
    child: Child,
    cgroup_parent: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill() of the process we spawned, with a valid signal number; SIGTERM
            // makes the development-mode agent remove its containers before it exits.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(self.cgroup_parent.join("runv"));
        let _ = std::fs::remove_dir(&self.cgroup_parent);
    }
}

fn agent_binary() -> PathBuf {
    std::env::var_os("RUNV_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| "target/x86_64-unknown-linux-musl/release/runv-agent".into())
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

async fn agent_runs(
    client: &AgentClient,
    spec: &Value,
    root: &Path,
    runs: usize,
) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    // The first, unmeasured, warms the agent and the page cache as the others' warm-up does.
    for run in 0..=runs {
        let id = format!("bench-{run}");
        let create = CreateContainerRequest {
            container_id: id.clone(),
            oci_spec_json: spec.to_string(),
            rootfs: Some(Rootfs {
                path: root.display().to_string(),
                readonly: true,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let start = Instant::now();
        client
            .create_container(ctx(), &create)
            .await
            .context("CreateContainer")?;
        let container = ContainerRequest {
            container_id: id.clone(),
            ..Default::default()
        };
        client
            .start_container(ctx(), &container)
            .await
            .context("StartContainer")?;
        let elapsed = start.elapsed();
        let wait = ProcessRequest {
            container_id: id.clone(),
            ..Default::default()
        };
        let exit = client
            .wait_process(ctx(), &wait)
            .await
            .context("WaitProcess")?;
        if exit.exit_status != 0 {
            bail!("the agent's container exited with {}", exit.exit_status);
        }
        let remove = RemoveContainerRequest {
            container_id: id,
            ..Default::default()
        };
        client
            .remove_container(ctx(), &remove)
            .await
            .context("RemoveContainer")?;
        if run > 0 {
            samples.push(ms(elapsed));
        }
    }
    Ok(samples)
}

fn agent_samples(dir: &Path, runs: usize) -> Result<Vec<f64>> {
    let bin = agent_binary();
    if !bin.exists() {
        bail!(
            "{} does not exist: build it with `make agent` or set RUNV_AGENT",
            bin.display()
        );
    }
    let socket = dir.join("agent.sock");
    let cgroup_parent = cgroup2_root().join(format!("runv-bench-{}", std::process::id()));
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = Command::new(&bin)
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .arg("--cgroup-root")
        .arg(&cgroup_parent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let _agent = Agent {
        child,
        cgroup_parent,
    };
    let spec = spec(Path::new(BUSYBOX_ROOT), "");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let address = format!("unix://{}", socket.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            match ttrpc::r#async::Client::connect(&address).await {
                Ok(client) => break AgentClient::new(client),
                Err(e) if Instant::now() > deadline => bail!("connect {address}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let sandbox = CreateSandboxRequest {
            sandbox_id: "bench".into(),
            ..Default::default()
        };
        client
            .create_sandbox(ctx(), &sandbox)
            .await
            .context("CreateSandbox")?;
        agent_runs(&client, &spec, Path::new(BUSYBOX_ROOT), runs).await
    })
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    if !Path::new(BUSYBOX_ROOT).join("bin/busybox").exists() {
        bail!("{BUSYBOX_ROOT} is missing: run `make install`");
    }
    let dir = tempfile::tempdir()?;
    let agent = agent_samples(dir.path(), o.runs)?;
    report.row(SECTION, "create+start (host)", "runv-agent", "ms", &agent);
    for bin in ["runc", "crun"] {
        if !on_path(bin) {
            report.note(SECTION, format!("{bin}: not installed"));
            continue;
        }
        let bundle = dir.path().join(format!("bundle-{bin}"));
        let state = dir.path().join(format!("state-{bin}"));
        std::fs::create_dir_all(&bundle)?;
        let cgroups = format!("/runv-bench-{bin}-{}", std::process::id());
        std::fs::write(
            bundle.join("config.json"),
            spec(Path::new(BUSYBOX_ROOT), &cgroups).to_string(),
        )?;
        // The first run is unmeasured; when it fails (crun refuses a cgroup v1/v2 hybrid
        // host, for one), the report says so instead of a figure.
        if let Err(e) = oci_runtime_once(bin, &state, &bundle, "bench-warm") {
            report.note(SECTION, format!("{bin}: not measured on this host: {e:#}"));
            continue;
        }
        let mut samples = Vec::new();
        for run in 0..o.runs {
            samples.push(oci_runtime_once(
                bin,
                &state,
                &bundle,
                &format!("bench-{run}"),
            )?);
        }
        report.row(SECTION, "create+start (host)", bin, "ms", &samples);
    }
    report.note(
        SECTION,
        "wall time of create and start of `true` (runv-agent: the CreateContainer and \
         StartContainer calls over its Unix socket; runc/crun: `create` + `start`), all natively \
         on this host from the same read-only root and spec; target: runv-agent no slower than runc",
    );
    Ok(())
}
