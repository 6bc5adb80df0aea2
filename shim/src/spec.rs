//! The bundle's OCI spec, adjusted for the guest: containerd writes it for a Linux host,
//! the agent runs it inside the VM.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use crate::errors::ShimError;

/// Reads the bundle's config.json.
pub fn load(bundle: &Path) -> Result<Spec, ShimError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|source| ShimError::Bundle {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        ShimError::InvalidArgument(format!("Parse the bundle's {}: {e}", path.display()))
    })
}

/// The pod's sandbox container as the other containers' specs refer to it.
#[derive(Debug, Clone, Copy)]
pub struct PodInit {
    /// The task pid containerd knows (`/proc/<pid>/ns/...` in the specs it writes).
    pub host_pid: u32,
    /// The sandbox container's init process in the guest, once started.
    pub guest_pid: Option<u32>,
}

/// The network namespace path of the host's spec, if it names one: the pod's, which the
/// sandbox's VM gets its network from.
pub fn network_namespace(spec: &Spec) -> Option<std::path::PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// Maps one namespace of the host's spec to the guest: `None` drops it.
///
/// The network namespace goes: the VM is the pod's network boundary. A path is only
/// meaningful when it names a namespace of the pod's sandbox container (what containerd's
/// CRI plugin writes for a pod's containers: `/proc/<sandbox task pid>/ns/<kind>`); it is
/// rewritten to that container's init in the guest. Any other host path cannot be joined
/// from inside a VM.
fn namespace_for_guest(
    mut ns: LinuxNamespace,
    pod: Option<PodInit>,
) -> Result<Option<LinuxNamespace>, ShimError> {
    if ns.typ() == LinuxNamespaceType::Network {
        return Ok(None);
    }
    let Some(path) = ns.path().clone().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Some(ns));
    };
    let refused = |why: &str| {
        ShimError::InvalidArgument(format!(
            "linux.namespaces: {:?} namespace path {}: {why}",
            ns.typ(),
            path.display()
        ))
    };
    let pod = pod.ok_or_else(|| refused("there is no sandbox container in this pod to join"))?;
    let kind = path
        .strip_prefix(format!("/proc/{}/ns", pod.host_pid))
        .map_err(|_| refused("a host namespace cannot be joined from inside the VM"))?
        .to_path_buf();
    let guest_pid = pod
        .guest_pid
        .ok_or_else(|| refused("the pod's sandbox container is not started"))?;
    ns.set_path(Some(Path::new(&format!("/proc/{guest_pid}/ns")).join(kind)));
    Ok(Some(ns))
}

/// The spec as the guest runs it: the root is the shared `rootfs` the agent is told about;
/// namespaces are the guest's (see [`namespace_for_guest`]); the host's cgroup path does not
/// apply in the VM, and OCI hooks are refused by name (runv does not run them). Bind mounts of host paths stay: the runtime
/// shares them with the guest and rewrites their sources as it creates the container
/// (`runv_runtime::volumes`), which is also where the pod's `/dev/shm` bind gives way to
/// the guest's own tmpfs.
pub fn for_guest(mut spec: Spec, pod: Option<PodInit>) -> Result<Spec, ShimError> {
    if let Some(root) = spec.root_mut() {
        root.set_path("rootfs".into());
    }
    if let Some(linux) = spec.linux_mut() {
        let mut namespaces = Vec::new();
        for ns in linux.namespaces().clone().unwrap_or_default() {
            if let Some(ns) = namespace_for_guest(ns, pod)? {
                namespaces.push(ns);
            }
        }
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(None);
    }
    runv_runtime::spec::refuse_hooks(&spec).map_err(ShimError::InvalidArgument)?;
    Ok(spec)
}

/// The pod a container belongs to, when a CRI runtime says so.
pub fn sandbox_id(spec: &Spec) -> Option<String> {
    spec.annotations()
        .as_ref()?
        .get("io.kubernetes.cri.sandbox-id")
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD_SPEC: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["uname", "-r"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hooks": {"prestart": []},
        "annotations": {"io.kubernetes.cri.sandbox-id": "pod1"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/x/resolv.conf", "options": ["rbind", "ro"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {
            "cgroupsPath": "/default/c1",
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/x"}
            ]
        }
    }"#;

    #[test]
    fn hooks_are_refused_by_name() {
        let mut json: serde_json::Value = serde_json::from_str(CONTAINERD_SPEC).unwrap();
        json["hooks"] = serde_json::json!({"createRuntime": [{"path": "/usr/bin/hook"}]});
        let spec: Spec = serde_json::from_value(json).unwrap();
        match for_guest(spec, None) {
            Err(ShimError::InvalidArgument(msg)) => {
                assert!(msg.starts_with("hooks.createRuntime:"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn guest_spec_drops_what_only_the_host_has_and_keeps_volumes() {
        let spec: Spec = serde_json::from_str(CONTAINERD_SPEC).unwrap();
        assert_eq!(sandbox_id(&spec).as_deref(), Some("pod1"));
        let spec = for_guest(spec, None).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
        assert!(json["linux"].get("cgroupsPath").is_none());
        let dest: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        // Host binds are the runtime's to share, not the shim's to drop.
        assert_eq!(dest, ["/proc", "/etc/resolv.conf", "/dev"]);
        assert_eq!(json["process"]["args"], serde_json::json!(["uname", "-r"]));
    }

    #[test]
    fn pod_namespaces_point_at_the_sandbox_container_in_the_guest() {
        let mut spec: Spec = serde_json::from_str(CONTAINERD_SPEC).unwrap();
        let namespaces: Vec<LinuxNamespace> = serde_json::from_str(
            r#"[{"type": "pid", "path": "/proc/4242/ns/pid"},
                {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                {"type": "uts", "path": "/proc/4242/ns/uts"},
                {"type": "mount"},
                {"type": "user", "path": "/proc/4242/ns/user"},
                {"type": "network", "path": "/proc/4242/ns/net"}]"#,
        )
        .unwrap();
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_namespaces(Some(namespaces));
        let pod = PodInit {
            host_pid: 4242,
            guest_pid: Some(57),
        };
        let guest = for_guest(spec.clone(), Some(pod)).unwrap();
        let json = serde_json::to_value(&guest).unwrap();
        assert_eq!(
            json["linux"]["namespaces"],
            serde_json::json!([
                {"type": "pid", "path": "/proc/57/ns/pid"},
                {"type": "ipc", "path": "/proc/57/ns/ipc"},
                {"type": "uts", "path": "/proc/57/ns/uts"},
                {"type": "mount"},
                {"type": "user", "path": "/proc/57/ns/user"}
            ])
        );
        // Another process's namespace on the host cannot be joined.
        let other = PodInit {
            host_pid: 1,
            guest_pid: Some(57),
        };
        let err = for_guest(spec.clone(), Some(other)).unwrap_err();
        assert!(err.to_string().contains("/proc/4242/ns/pid"), "{err}");
        assert_eq!(
            err.code(),
            containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT
        );
        let err = for_guest(spec.clone(), None).unwrap_err();
        assert!(err.to_string().contains("no sandbox container"), "{err}");
        let unstarted = PodInit {
            host_pid: 4242,
            guest_pid: None,
        };
        let err = for_guest(spec, Some(unstarted)).unwrap_err();
        assert!(err.to_string().contains("not started"), "{err}");
    }

    #[test]
    fn missing_bundle_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert_eq!(err.code(), containerd_shim::protos::ttrpc::Code::NOT_FOUND);
    }
}
