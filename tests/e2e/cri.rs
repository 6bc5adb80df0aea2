//! The Kubernetes CRI end to end, as the kubelet drives it: a containerd of the test's own
//! with its CRI plugin (`runv_tests::containerd::Containerd::start_cri`), a pod on the host
//! network with two busybox containers, exec and stats in each, then the pod stopped and
//! removed, and nothing of it left. The same flow runs on runc (which checks the harness) and
//! on runv (one microVM for the pod).

use std::time::{Duration, Instant};

use runv_tests::containerd::{
    Containerd, BUSYBOX_IMAGE, CRI_NAMESPACE, RUNC_HANDLER, RUNV_HANDLER,
};
use runv_tests::cri::{self, v1 as api};
use runv_tests::*;

/// The memory limit UpdateContainerResources gives the first container.
const UPDATED_MEMORY_LIMIT: i64 = 96 * 1024 * 1024;

/// What a pod's containers saw while it ran.
struct PodReport {
    /// `cat /proc/sys/kernel/random/boot_id` in each container.
    boot_ids: Vec<String>,
    /// `uname -r` in each container.
    releases: Vec<String>,
    /// `ContainerStats` of each container.
    stats: Vec<api::ContainerStats>,
    /// The first container's memory limit as it sees it, after UpdateContainerResources.
    updated_memory_limit: String,
    /// The command lines of the processes the pod's shims started, while it ran.
    helpers: Vec<(i32, String)>,
    /// The host cgroups below the pod's cgroup parent, while it ran.
    cgroups: Vec<std::path::PathBuf>,
    /// The pod's cgroup parent.
    cgroup_parent: String,
    /// `/proc/<pid>/cgroup` of each of `helpers`, while it ran.
    helper_cgroups: Vec<(i32, String)>,
}

impl PodReport {
    /// The pod's QEMU processes while it ran.
    fn qemus(&self) -> Vec<&(i32, String)> {
        self.helpers
            .iter()
            .filter(|(_, cmdline)| {
                cmdline
                    .split_whitespace()
                    .next()
                    .and_then(|arg0| arg0.rsplit('/').next())
                    .is_some_and(|name| name.starts_with("qemu-system"))
            })
            .collect()
    }
}

fn host_kernel_release() -> String {
    nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .into_owned()
}

fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("host boot_id")
        .trim()
        .to_string()
}

/// Runs `cmd` in container `id` with ExecSync; fails unless it exits 0; gives its stdout.
fn exec(cri: &mut cri::Cri, containerd: &Containerd, id: &str, cmd: &[&str]) -> String {
    let out = cri
        .exec_sync(id, cmd, 60)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}\n{}", containerd.log()));
    assert_eq!(
        out.exit_code,
        0,
        "{cmd:?} in {id}: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `check` until it gives `None` (nothing left), failing with its last report after
/// `limit`.
fn wait_until_gone(what: &str, limit: Duration, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let Some(left) = check() else {
            return;
        };
        assert!(Instant::now() < deadline, "{what} left: {left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kubelet's flow on runtime handler `handler`: RunPodSandbox (host network), two
/// containers created and started, ExecSync and ContainerStats in each, StopPodSandbox,
/// RemovePodSandbox; then checks that nothing of the pod is left. Gives what the containers
/// saw, or `None` when the test cannot run here (not root).
fn pod_lifecycle(handler: &str) -> Option<PodReport> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: containerd needs root");
        return None;
    }
    let containerd = Containerd::start_cri();
    let mut cri = containerd.cri();
    let log = |what: &str, e: tonic::Status| -> String {
        format!("{what}: {e}\ncontainerd log:\n{}", containerd.log())
    };

    let name = unique_name(&format!("cri-{handler}"));
    let log_dir = containerd.dir().join("pods").join(&name);
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let pod_config = cri::host_network_pod(&name, &log_dir, &containerd.cgroup_parent());
    let pod = cri
        .run_pod_sandbox(&pod_config, handler)
        .unwrap_or_else(|e| panic!("{}", log("RunPodSandbox", e)));

    let mut ids = Vec::new();
    for container in ["first", "second"] {
        let config = cri::container(container, BUSYBOX_IMAGE, &["sleep", "3600"]);
        let id = cri
            .create_container(&pod, &config, &pod_config)
            .unwrap_or_else(|e| panic!("{}", log(&format!("CreateContainer {container}"), e)));
        ids.push(id);
    }
    for id in &ids {
        cri.start_container(id)
            .unwrap_or_else(|e| panic!("{}", log(&format!("StartContainer {id}"), e)));
    }
    for id in &ids {
        let status = cri
            .container_status(id)
            .unwrap_or_else(|e| panic!("{}", log(&format!("ContainerStatus {id}"), e)));
        assert_eq!(
            status.state,
            i32::from(api::ContainerState::ContainerRunning),
            "{id}: {status:?}"
        );
    }

    let helpers = descendants_of(&containerd.shim_pids());
    eprintln!("processes of the pod's shims: {helpers:?}");
    // The shims' sockets (in /run/containerd/s, outside the test's directory).
    let sockets: Vec<_> = std::iter::once(&pod)
        .chain(&ids)
        .map(|id| containerd.shim_socket(CRI_NAMESPACE, id))
        .filter(|socket| socket.exists())
        .collect();
    assert!(!sockets.is_empty(), "no socket of the pod's shims");
    let mut report = PodReport {
        boot_ids: Vec::new(),
        releases: Vec::new(),
        stats: Vec::new(),
        updated_memory_limit: String::new(),
        helper_cgroups: helpers
            .iter()
            .map(|(pid, _)| {
                let text =
                    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                (*pid, text)
            })
            .collect(),
        helpers,
        cgroups: containerd.cgroups(),
        cgroup_parent: containerd.cgroup_parent(),
    };
    for id in &ids {
        let boot_id = exec(
            &mut cri,
            &containerd,
            id,
            &["cat", "/proc/sys/kernel/random/boot_id"],
        );
        report.boot_ids.push(boot_id);
        report
            .releases
            .push(exec(&mut cri, &containerd, id, &["uname", "-r"]));
    }
    for id in &ids {
        let stats = cri
            .container_stats(id)
            .unwrap_or_else(|e| panic!("{}", log(&format!("ContainerStats {id}"), e)));
        report.stats.push(stats);
    }
    // New limits reach the container's cgroup (cgroup v2 in a runv guest, the v1 memory
    // controller under runc on a hybrid host).
    let resources = api::LinuxContainerResources {
        memory_limit_in_bytes: UPDATED_MEMORY_LIMIT,
        ..Default::default()
    };
    cri.update_container_resources(&ids[0], resources)
        .unwrap_or_else(|e| panic!("{}", log("UpdateContainerResources", e)));
    report.updated_memory_limit = exec(
        &mut cri,
        &containerd,
        &ids[0],
        &[
            "sh",
            "-c",
            "f=/sys/fs/cgroup$(grep '^0::' /proc/self/cgroup | cut -d: -f3)/memory.max; \
             if [ -f \"$f\" ]; then cat \"$f\"; \
             else cat /sys/fs/cgroup/memory/memory.limit_in_bytes; fi",
        ],
    );
    // An exec's exit status and both of its streams come back apart.
    let out = cri
        .exec_sync(&ids[1], &["sh", "-c", "echo out; echo err >&2; exit 3"], 60)
        .unwrap_or_else(|e| panic!("{}", log("ExecSync with exit 3", e)));
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.stderr.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );

    cri.stop_pod_sandbox(&pod)
        .unwrap_or_else(|e| panic!("{}", log("StopPodSandbox", e)));
    cri.remove_pod_sandbox(&pod)
        .unwrap_or_else(|e| panic!("{}", log("RemovePodSandbox", e)));

    // Nothing of the pod is left: not in the CRI, not in containerd, no process, no mount,
    // no runv state.
    let pods = cri.list_pod_sandboxes().expect("ListPodSandbox");
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let containers = cri.list_containers().expect("ListContainers");
    assert!(containers.is_empty(), "containers left: {containers:?}");
    for what in ["containers", "tasks"] {
        let out = containerd.ctr(
            &["--namespace", CRI_NAMESPACE, what, "ls", "--quiet"],
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "ctr {what} ls: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "", "containerd {what} left");
    }
    let limit = Duration::from_secs(30);
    wait_until_gone("shims", limit, || {
        let shims = processes_mentioning(&containerd.socket().display().to_string());
        (!shims.is_empty()).then(|| format!("{shims:?}"))
    });
    wait_until_gone("processes the shims started", limit, || {
        let alive: Vec<_> = report
            .helpers
            .iter()
            .filter(|(pid, cmdline)| {
                let now = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                !now.is_empty() && String::from_utf8_lossy(&now).replace('\0', " ") == *cmdline
            })
            .collect();
        (!alive.is_empty()).then(|| format!("{alive:?}"))
    });
    wait_until_gone("mounts", limit, || {
        let mounts = mounts_mentioning(&containerd.dir().display().to_string());
        (!mounts.is_empty()).then(|| format!("{mounts:?}"))
    });
    wait_until_gone("shim sockets", limit, || {
        let left: Vec<_> = sockets.iter().filter(|s| s.exists()).collect();
        (!left.is_empty()).then(|| format!("{left:?}"))
    });
    wait_until_gone("cgroups", limit, || {
        let cgroups = containerd.cgroups();
        (!cgroups.is_empty()).then(|| format!("{cgroups:?}"))
    });
    assert_no_leaks(&pod);
    for id in &ids {
        assert_no_leaks(id);
    }
    Some(report)
}

/// Checks of the CRI flow itself, whatever the runtime.
fn assert_stats(report: &PodReport) {
    assert_eq!(
        report.updated_memory_limit,
        UPDATED_MEMORY_LIMIT.to_string(),
        "the updated memory limit inside the container"
    );
    assert_eq!(report.stats.len(), 2);
    for stats in &report.stats {
        let working_set = stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        assert!(working_set > 0, "no memory working set: {stats:?}");
        let cpu = stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        assert!(cpu > 0, "no CPU usage: {stats:?}");
    }
}

#[test]
fn cri_pod_on_runc() {
    let Some(report) = pod_lifecycle(RUNC_HANDLER) else {
        return;
    };
    let host = host_kernel_release();
    assert_eq!(report.releases, [host.clone(), host]);
    let boot_id = host_boot_id();
    assert_eq!(report.boot_ids, [boot_id.clone(), boot_id]);
    assert!(report.qemus().is_empty(), "{:?}", report.qemus());
    assert!(
        !report.cgroups.is_empty(),
        "runc puts the pod's containers in cgroups below its cgroup parent"
    );
    assert_stats(&report);
}

/// containerd-shim-runv-v2 serving a pod: the sandbox (pause) container and the pod's
/// containers in one VM (one shim for all, as the CRI's io.kubernetes.cri.sandbox-id
/// annotation groups them), Exec (ExecSync), and Stats.
#[test]
fn cri_pod_on_runv() {
    let Some(report) = pod_lifecycle(RUNV_HANDLER) else {
        return;
    };
    let guest = built_kernel_release();
    assert!(guest.ends_with("-runv"), "guest kernel release {guest}");
    assert_ne!(guest, host_kernel_release());
    assert_eq!(report.releases, [guest.clone(), guest]);
    let (first, second) = (&report.boot_ids[0], &report.boot_ids[1]);
    assert_eq!(first, second, "the pod's containers must share one VM");
    assert_ne!(*first, host_boot_id(), "the pod must not run on the host");
    assert_eq!(
        report.qemus().len(),
        1,
        "one QEMU for the pod: {:?}",
        report.helpers
    );
    // The VM's processes run in the pod's host cgroup (the sandbox container's
    // cgroupsPath, below the pod's cgroup parent) in every hierarchy.
    let parent = format!(":{}/", report.cgroup_parent);
    for (pid, text) in &report.helper_cgroups {
        assert!(
            !text.is_empty() && text.lines().all(|l| l.contains(&parent)),
            "process {pid} is not in the pod's cgroup below {}: {text}",
            report.cgroup_parent
        );
    }
    assert!(!report.cgroups.is_empty(), "no host cgroup for the pod");
    assert_stats(&report);
}
