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
    /// A field whose name is built at run time, such as `linux.uidMappings[1]`.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
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
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                "mounts.destination",
                format!("{:?} is not absolute", m.destination()),
            ));
        }
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
