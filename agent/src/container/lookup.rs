//! Finding the executable of `process.args[0]`, the way a shell's PATH search does.

use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use super::sync::{FailureKind, InitFailure};

/// The PATH used when the spec's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH value from a `NAME=value` environment list.
pub fn path_from_env<S: AsRef<str>>(env: &[S]) -> &str {
    env.iter()
        .rev()
        .find_map(|var| var.as_ref().strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// What a candidate file is to us.
#[derive(Debug, PartialEq, Eq)]
enum Candidate {
    Executable,
    NotExecutable,
    Missing,
}

fn check(path: &Path) -> Candidate {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            if access(path, AccessFlags::X_OK).is_ok() {
                Candidate::Executable
            } else {
                Candidate::NotExecutable
            }
        }
        Ok(_) => Candidate::NotExecutable,
        Err(_) => Candidate::Missing,
    }
}

/// Resolves `name` against `path_var` (relative to the current directory if it contains
/// a slash).
pub fn resolve(name: &str, path_var: &str) -> Result<PathBuf, InitFailure> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return match check(&path) {
            Candidate::Executable => Ok(path),
            Candidate::NotExecutable => Err(InitFailure::new(
                FailureKind::PermissionDenied,
                format!("permission denied: {name:?} is not executable"),
            )),
            Candidate::Missing => Err(InitFailure::new(
                FailureKind::NotFound,
                format!("no such file or directory: {name:?}"),
            )),
        };
    }
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        match check(&candidate) {
            Candidate::Executable => return Ok(candidate),
            Candidate::NotExecutable => {
                denied.get_or_insert(candidate);
            }
            Candidate::Missing => {}
        }
    }
    Err(match denied {
        Some(path) => InitFailure::new(
            FailureKind::PermissionDenied,
            format!("permission denied: {:?} is not executable", path),
        ),
        None => InitFailure::new(
            FailureKind::NotFound,
            format!("executable file not found in $PATH: {name:?}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn path_comes_from_env() {
        assert_eq!(path_from_env(&["A=1", "PATH=/x:/y"]), "/x:/y");
        assert_eq!(path_from_env::<&str>(&[]), DEFAULT_PATH);
    }

    #[test]
    fn resolves_in_path_order() {
        let dir = std::env::temp_dir().join(format!("runv-lookup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::set_permissions(a.join("tool"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_var = format!("{}:{}", a.display(), b.display());
        assert_eq!(resolve("tool", &path_var).unwrap(), b.join("tool"));

        let only_a = a.display().to_string();
        let err = resolve("tool", &only_a).unwrap_err();
        assert_eq!(err.kind, FailureKind::PermissionDenied);

        let err = resolve("nope", &path_var).unwrap_err();
        assert_eq!(err.kind, FailureKind::NotFound);
        assert_eq!(err.message, "executable file not found in $PATH: \"nope\"");

        let abs = b.join("tool").display().to_string();
        assert_eq!(resolve(&abs, "").unwrap(), b.join("tool"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
