//! OCI bundles: a directory with a `config.json` and the container's root, as `runv run
//! --bundle` takes them.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Errors loading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// config.json could not be read.
    #[error("Read {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// config.json is not an OCI runtime spec.
    #[error("{path}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
}

/// A loaded bundle: its spec and the host directory of its root.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The spec from config.json, as written.
    pub spec: Spec,
    /// `root.path`, relative to the bundle directory unless absolute.
    pub rootfs: PathBuf,
}

/// Loads `dir/config.json` and checks what runv needs of it before anything is made: a
/// process with a command, an absolute cwd, and a root path.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let invalid = |reason: String| BundleError::Invalid {
        path: path.clone(),
        reason,
    };
    let spec: Spec = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    crate::spec::refuse_hooks(&spec).map_err(invalid)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process: missing: a bundle for `runv run` needs one".into()))?;
    let command = process.args().as_ref().and_then(|a| a.first());
    if command.is_none_or(String::is_empty) {
        return Err(invalid(
            "process.args: empty: name the program to run".into(),
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd: {:?} is not an absolute path",
            process.cwd()
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root: missing".into()))?;
    if root.path().as_os_str().is_empty() {
        return Err(invalid("root.path: empty".into()));
    }
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    Ok(Bundle { spec, rootfs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn root_path_is_relative_to_the_bundle() {
        let dir = bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
                "process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        let b = load(dir.path()).unwrap();
        assert_eq!(b.rootfs, dir.path().join("rootfs"));
        let dir = bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"/abs/root"},
                "process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        assert_eq!(load(dir.path()).unwrap().rootfs, PathBuf::from("/abs/root"));
    }

    #[test]
    fn bad_configs_name_the_file_and_field() {
        let missing = tempfile::tempdir().unwrap();
        let err = load(missing.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        for (config, field) in [
            ("{", "config.json"),
            (r#"{"ociVersion":"1.0.2","root":{"path":"r"}}"#, "process"),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"r"},"process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "process.args",
            ),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"r"},"process":{"args":["x"],"cwd":"rel","user":{"uid":0,"gid":0}}}"#,
                "process.cwd",
            ),
            (
                r#"{"ociVersion":"1.0.2","process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                "root",
            ),
        ] {
            let dir = bundle(config);
            let err = load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("config.json"),
                "{config}: {err}"
            );
        }
    }
}
