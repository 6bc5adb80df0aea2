//! The bundle's OCI spec, adjusted for the guest: containerd writes it for a Linux host,
//! the agent runs it inside the VM.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::errors::ShimError;

/// Namespaces the agent creates for a container; any other kind in the spec (network, user,
/// time) is the VM's own and is dropped.
const GUEST_NAMESPACES: [LinuxNamespaceType; 5] = [
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Cgroup,
];

/// Reads `<bundle>/config.json`.
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

/// The spec as the guest runs it: the root is the shared `rootfs` the agent is told about;
/// namespaces are those the agent supports, without host paths to join; bind mounts of
/// host paths, hooks (host programs) and the host's cgroup path do not apply in the VM.
pub fn for_guest(mut spec: Spec) -> Spec {
    if let Some(root) = spec.root_mut() {
        root.set_path("rootfs".into());
    }
    if let Some(linux) = spec.linux_mut() {
        let namespaces = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|ns| GUEST_NAMESPACES.contains(&ns.typ()))
            .map(|mut ns| {
                ns.set_path(None);
                ns
            })
            .collect();
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(None);
    }
    if let Some(mounts) = spec.mounts().clone() {
        let kept = mounts
            .into_iter()
            .filter(|m| {
                let bind = m.typ().as_deref() == Some("bind")
                    || m.options()
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
                !bind
            })
            .collect();
        spec.set_mounts(Some(kept));
    }
    spec.set_hooks(None);
    spec
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
        "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
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
    fn guest_spec_drops_what_only_the_host_has() {
        let spec: Spec = serde_json::from_str(CONTAINERD_SPEC).unwrap();
        assert_eq!(sandbox_id(&spec).as_deref(), Some("pod1"));
        let spec = for_guest(spec);
        let json = serde_json::to_value(&spec).unwrap();
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
        assert!(json["linux"].get("cgroupsPath").is_none());
        assert!(json.get("hooks").is_none());
        let dest: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dest, ["/proc", "/dev"]);
        assert_eq!(json["process"]["args"], serde_json::json!(["uname", "-r"]));
    }

    #[test]
    fn missing_bundle_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert_eq!(err.code(), containerd_shim::protos::ttrpc::Code::NOT_FOUND);
    }
}
