//! Parsing and validation of the OCI spec a container is created from.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// A spec the agent refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("oci_spec_json: {0}")]
    Json(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A field of a list entry or map key, named with its index (`linux.devices[2].path`).
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
}

/// Parses and validates the spec JSON of a CreateContainer request.
pub fn parse(json: &str) -> Result<Spec, SpecError> {
    let spec: Spec = serde_json::from_str(json).map_err(|e| SpecError::Json(e.to_string()))?;
    validate(&spec)?;
    Ok(spec)
}

/// Checks what the agent relies on before it creates anything.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::Missing("process"))?;
    validate_process(process)?;
    if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        let compiled = super::seccomp::compile(seccomp)?;
        if !compiled.skipped.is_empty() {
            tracing::warn!(skipped = ?compiled.skipped, "seccomp: not syscalls of this architecture");
        }
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                "mounts.destination",
                format!("{:?} is not absolute", m.destination()),
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        validate_linux(linux)?;
        validate_devices_and_resources(linux)?;
    }
    Ok(())
}

/// Checks the `linux` fields the agent applies itself and refuses those it cannot honour
/// inside the VM.
fn validate_linux(linux: &oci_spec::runtime::Linux) -> Result<(), SpecError> {
    if linux.intel_rdt().is_some() {
        return Err(invalid(
            "linux.intelRdt",
            "Intel RDT (resctrl) is not available inside the sandbox VM",
        ));
    }
    if linux.memory_policy().is_some() {
        return Err(invalid(
            "linux.memoryPolicy",
            "NUMA memory policies are not supported: the sandbox VM has a single memory node",
        ));
    }
    if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(invalid(
            "linux.netDevices",
            "moving network devices into a container is not supported: the pod's network is the VM's",
        ));
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(invalid(
            "linux.timeOffsets",
            "time namespaces are not supported",
        ));
    }
    if let Some(personality) = linux.personality() {
        super::process_attrs::validate_personality(personality)?;
    }
    if let Some(value) = linux.rootfs_propagation() {
        if super::mounts::root_propagation(value).is_none() {
            return Err(invalid(
                "linux.rootfsPropagation",
                format!("{value:?} is not one of [r]private, [r]slave, [r]shared, [r]unbindable"),
            ));
        }
    }
    Ok(())
}

/// `linux.devices` and `linux.resources`, including the device rules: everything the
/// agent would refuse later when it makes the nodes or writes the cgroup.
fn validate_devices_and_resources(linux: &oci_spec::runtime::Linux) -> Result<(), SpecError> {
    super::devices::validate(linux.devices().as_deref().unwrap_or_default())?;
    if let Some(resources) = linux.resources() {
        super::cgroup::validate(resources).map_err(|err| SpecError::InvalidField {
            field: err.field,
            reason: err.reason,
        })?;
    }
    Ok(())
}

/// Checks a process (the container's, or an exec process): a command, an absolute cwd,
/// NAME=value environment entries.
pub fn validate_process(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    let args = process
        .args()
        .as_ref()
        .filter(|args| !args.is_empty())
        .ok_or(SpecError::Missing("process.args"))?;
    if args[0].is_empty() {
        return Err(invalid("process.args", "args[0] is empty"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{:?} is not absolute", process.cwd()),
        ));
    }
    for var in process.env().iter().flatten() {
        if !var.contains('=') {
            return Err(invalid("process.env", format!("{var:?} is not NAME=value")));
        }
    }
    if let Some(sched) = process.scheduler() {
        super::process_attrs::sched_attr(sched)?;
    }
    if let Some(prio) = process.io_priority() {
        super::process_attrs::io_priority_value(prio)?;
    }
    if let Some(affinity) = process.exec_cpu_affinity() {
        super::process_attrs::validate_cpu_affinity(affinity)?;
    }
    Ok(())
}

/// The container's root: the request's rootfs path, else the spec's `root.path` (which
/// must then be absolute). Read-only if either asks for it.
pub fn rootfs(
    request_path: &str,
    request_readonly: bool,
    spec: &Spec,
) -> Result<(PathBuf, bool), SpecError> {
    let spec_root = spec.root().as_ref();
    let readonly = request_readonly || spec_root.and_then(|r| r.readonly()).unwrap_or(false);
    let path = if request_path.is_empty() {
        spec_root
            .map(|r| r.path().clone())
            .ok_or(SpecError::Missing("rootfs.path"))?
    } else {
        PathBuf::from(request_path)
    };
    if !path.is_absolute() {
        return Err(invalid("rootfs.path", format!("{path:?} is not absolute")));
    }
    Ok((path, readonly))
}

/// The terminal size the spec asks for, as (rows, cols).
pub fn console_size(spec: &Spec) -> Option<(u16, u16)> {
    let size = spec.process().as_ref()?.console_size()?;
    let rows = u16::try_from(size.height()).unwrap_or(u16::MAX);
    let cols = u16::try_from(size.width()).unwrap_or(u16::MAX);
    Some((rows, cols))
}

/// Whether the process gets a pty.
pub fn terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// Checks that a container id is usable as a cgroup directory name.
pub fn check_container_id(id: &str) -> Result<(), SpecError> {
    let valid = !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "container_id",
            format!("{id:?} must be 1-255 of [A-Za-z0-9_.-]"),
        ))
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Whether `path` names the same place as `dest` once both are normalized.
pub fn same_destination(path: &Path, dest: &str) -> bool {
    normalize(path) == normalize(Path::new(dest))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for comp in path.components() {
        match comp {
            std::path::Component::Normal(c) => out.push(c),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "/rootfs", "readonly": true}
    }"#;

    #[test]
    fn good_spec_parses() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(
            rootfs("", false, &spec).unwrap(),
            (PathBuf::from("/rootfs"), true)
        );
        assert_eq!(
            rootfs("/other", false, &spec).unwrap(),
            (PathBuf::from("/other"), true)
        );
        assert!(!terminal(&spec));
    }

    #[test]
    fn bad_json_is_named() {
        assert!(matches!(parse("{not json"), Err(SpecError::Json(_))));
    }

    #[test]
    fn missing_process() {
        assert_eq!(
            parse(r#"{"ociVersion": "1.0.2"}"#),
            Err(SpecError::Missing("process"))
        );
    }

    #[test]
    fn empty_args() {
        let json = r#"{"ociVersion": "1.0.2", "process": {"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}}"#;
        assert_eq!(parse(json), Err(SpecError::Missing("process.args")));
        let json =
            r#"{"ociVersion": "1.0.2", "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}}}"#;
        assert_eq!(parse(json), Err(SpecError::Missing("process.args")));
    }

    #[test]
    fn relative_cwd() {
        let json = r#"{"ociVersion": "1.0.2", "process": {"args": ["a"], "cwd": "tmp", "user": {"uid": 0, "gid": 0}}}"#;
        assert!(matches!(
            parse(json),
            Err(SpecError::Invalid {
                field: "process.cwd",
                ..
            })
        ));
    }

    fn field_of(json: &str) -> &'static str {
        match parse(json) {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn fields_the_vm_cannot_honour_are_named() {
        let base = r#""process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#;
        for (linux, field) in [
            (r#"{"intelRdt": {"closID": "x"}}"#, "linux.intelRdt"),
            (
                r#"{"memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0"}}"#,
                "linux.memoryPolicy",
            ),
            (r#"{"netDevices": {"eth1": {}}}"#, "linux.netDevices"),
            (
                r#"{"rootfsPropagation": "sideways"}"#,
                "linux.rootfsPropagation",
            ),
            (
                r#"{"personality": {"domain": "LINUX", "flags": ["a"]}}"#,
                "linux.personality.flags",
            ),
        ] {
            let json = format!(r#"{{"ociVersion": "1.0.2", {base}, "linux": {linux}}}"#);
            assert_eq!(field_of(&json), field, "{linux}");
        }
        let ok = format!(
            r#"{{"ociVersion": "1.0.2", {base}, "linux": {{"rootfsPropagation": "rshared", "personality": {{"domain": "LINUX32"}}}}}}"#
        );
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn process_scheduling_fields_are_checked() {
        for (extra, field) in [
            (
                r#""scheduler": {"policy": "SCHED_RR"}"#,
                "process.scheduler.priority",
            ),
            (
                r#""ioPriority": {"class": "IOPRIO_CLASS_RT", "priority": 8}"#,
                "process.ioPriority.priority",
            ),
            (
                r#""execCPUAffinity": {"final": "3-1"}"#,
                "process.execCPUAffinity.final",
            ),
        ] {
            let json = format!(
                r#"{{"ociVersion": "1.0.2", "process": {{"args": ["sh"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}, {extra}}}}}"#
            );
            assert_eq!(field_of(&json), field, "{extra}");
        }
    }

    #[test]
    fn container_ids() {
        assert!(check_container_id("web-1_a.b").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn destinations_compare_normalized() {
        assert!(same_destination(Path::new("/dev/"), "/dev"));
        assert!(same_destination(Path::new("/dev/./pts"), "/dev/pts"));
        assert!(!same_destination(Path::new("/devx"), "/dev"));
    }
}
