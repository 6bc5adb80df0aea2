//! The namespaces of a container, from the spec's `linux.namespaces`.
//!
//! A namespace listed without a path is created for the container; one with a path is
//! joined (the path is in the guest, e.g. `/proc/<pid>/ns/ipc` of another container of
//! the pod); one not listed is shared with the agent, as OCI says. Two exceptions, both
//! because the VM is the sandbox boundary: every container gets its own mount namespace
//! (its root is pivoted), and the network namespace is the VM's, shared by the pod's
//! containers, unless a path names another namespace in the guest. User and time
//! namespaces are refused until they are supported.

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::spec::SpecError;

/// A namespace the container's init process joins with setns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The `/proc/<pid>/ns/` name: ipc, uts, net, cgroup.
    pub kind: String,
    pub path: PathBuf,
}

/// How the init process gets its namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Namespaces created by the clone.
    pub clone_flags: CloneFlags,
    /// The pid namespace to clone the init process into, when joined.
    pub join_pid: Option<PathBuf>,
    /// Namespaces the init process joins after exec, before its setup.
    pub join: Vec<Join>,
    /// The init process unshares a new cgroup namespace (after it is in its cgroup).
    pub new_cgroup: bool,
}

fn invalid(reason: String) -> SpecError {
    SpecError::Invalid {
        field: "linux.namespaces",
        reason,
    }
}

/// The plan for `spec`; paths must exist in the guest.
pub fn plan(spec: &Spec) -> Result<Plan, SpecError> {
    let mut plan = Plan {
        clone_flags: CloneFlags::CLONE_NEWNS,
        join_pid: None,
        join: Vec::new(),
        new_cgroup: false,
    };
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut seen = Vec::new();
    for ns in &namespaces {
        let kind = ns.typ();
        if seen.contains(&kind) {
            return Err(invalid(format!("{kind:?} is listed twice")));
        }
        seen.push(kind);
        let path = ns.path().as_ref().filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = path {
            check_path(kind, path)?;
        }
        match (kind, path) {
            (LinuxNamespaceType::Mount, None) => {}
            (LinuxNamespaceType::Mount, Some(path)) => {
                return Err(invalid(format!(
                    "joining the mount namespace {} is not supported: every container has its own",
                    path.display()
                )))
            }
            (LinuxNamespaceType::Network, None) => {}
            (LinuxNamespaceType::Pid, None) => plan.clone_flags |= CloneFlags::CLONE_NEWPID,
            (LinuxNamespaceType::Pid, Some(path)) => plan.join_pid = Some(path.clone()),
            (LinuxNamespaceType::Ipc, None) => plan.clone_flags |= CloneFlags::CLONE_NEWIPC,
            (LinuxNamespaceType::Uts, None) => plan.clone_flags |= CloneFlags::CLONE_NEWUTS,
            (LinuxNamespaceType::Cgroup, None) => plan.new_cgroup = true,
            (LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts, Some(path))
            | (LinuxNamespaceType::Network | LinuxNamespaceType::Cgroup, Some(path)) => {
                plan.join.push(Join {
                    kind: proc_name(kind).to_string(),
                    path: path.clone(),
                });
            }
            (LinuxNamespaceType::User | LinuxNamespaceType::Time, _) => {
                return Err(invalid(format!(
                    "{} namespaces are not supported",
                    proc_name(kind)
                )))
            }
        }
    }
    let has_uts = seen.contains(&LinuxNamespaceType::Uts);
    for (field, value) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if value.as_deref().is_some_and(|h| !h.is_empty()) && !has_uts {
            return Err(SpecError::Invalid {
                field,
                reason: format!("setting the {field} needs a uts namespace in linux.namespaces"),
            });
        }
    }
    Ok(plan)
}

/// The namespace's name under `/proc/<pid>/ns/`.
pub fn proc_name(kind: LinuxNamespaceType) -> &'static str {
    match kind {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

fn check_path(kind: LinuxNamespaceType, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(invalid(format!(
            "{} namespace path {} is not absolute",
            proc_name(kind),
            path.display()
        )));
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Err(invalid(format!(
            "{} namespace path {} does not exist in the guest",
            proc_name(kind),
            path.display()
        )));
    }
    Ok(())
}

/// Joins every namespace of `joins` (the init and exec processes, single-threaded).
pub fn join_all(joins: &[Join]) -> Result<(), super::sync::InitFailure> {
    use super::sync::InitFailure;
    // Open them all first: joining one (the mount namespace) can hide the others' paths.
    let mut files = Vec::new();
    for join in joins {
        let file = std::fs::File::open(&join.path).map_err(|e| {
            InitFailure::os(
                format!("open {} namespace {}", join.kind, join.path.display()),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        files.push((join, file));
    }
    for (join, file) in files {
        nix::sched::setns(&file, CloneFlags::empty()).map_err(|e| {
            InitFailure::os(
                format!("join {} namespace {}", join.kind, join.path.display()),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": {namespaces}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn new_namespaces() {
        let plan = plan(&spec(
            r#"[{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "cgroup"}, {"type": "network"}]"#,
        ))
        .unwrap();
        assert_eq!(
            plan.clone_flags,
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
        );
        assert!(plan.new_cgroup);
        assert!(plan.join.is_empty());
        assert_eq!(plan.join_pid, None);
    }

    #[test]
    fn unlisted_namespaces_are_shared() {
        let plan = plan(&spec(r#"[{"type": "mount"}]"#)).unwrap();
        assert_eq!(plan.clone_flags, CloneFlags::CLONE_NEWNS);
        assert!(!plan.new_cgroup);
    }

    #[test]
    fn paths_are_joined() {
        let plan = plan(&spec(
            r#"[{"type": "pid", "path": "/proc/self/ns/pid"}, {"type": "mount"},
                {"type": "ipc", "path": "/proc/self/ns/ipc"},
                {"type": "network", "path": "/proc/self/ns/net"}]"#,
        ))
        .unwrap();
        assert_eq!(plan.clone_flags, CloneFlags::CLONE_NEWNS);
        assert_eq!(plan.join_pid, Some(PathBuf::from("/proc/self/ns/pid")));
        let kinds: Vec<&str> = plan.join.iter().map(|j| j.kind.as_str()).collect();
        assert_eq!(kinds, ["ipc", "net"]);
    }

    #[test]
    fn bad_namespaces_name_the_problem() {
        let err = plan(&spec(r#"[{"type": "user"}]"#)).unwrap_err();
        assert!(err.to_string().contains("user namespaces"), "{err}");
        let err = plan(&spec(r#"[{"type": "ipc", "path": "/nonexistent/ns"}]"#)).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/ns does not exist"),
            "{err}"
        );
        let err = plan(&spec(r#"[{"type": "ipc"}, {"type": "ipc"}]"#)).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = plan(&spec(r#"[{"type": "mount", "path": "/proc/self/ns/mnt"}]"#)).unwrap_err();
        assert!(err.to_string().contains("mount namespace"), "{err}");
        let mut hostname = spec(r#"[{"type": "mount"}]"#);
        hostname.set_hostname(Some("h".into()));
        let err = plan(&hostname).unwrap_err();
        assert!(err.to_string().contains("uts namespace"), "{err}");
    }
}
