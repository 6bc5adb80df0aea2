//! Sandbox state on disk, under `<state_dir>/<id>/`, so the CLI and a restarted shim find
//! every sandbox and what belongs to it.
//!
//! Layout of a sandbox directory:
//! - `state.json`: [`SandboxState`], rewritten atomically at every change;
//! - `lock`: held (flock) by the process that owns the sandbox for as long as it lives;
//! - `console.log`, `<helper>.log`: the guest console and helper process logs;
//! - `vsock.sock`, `vhost-vsock.sock`, `virtiofsd.sock`, `qmp.sock`: hypervisor sockets;
//! - `shared/`: exported to the guest over virtio-fs; `shared/<container>/rootfs`.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hypervisor::ProcessInfo;

/// Errors reading or writing sandbox state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The id is not usable as a sandbox or container id.
    #[error("Invalid id {0:?}: use 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit")]
    InvalidId(String),
    /// A sandbox of that id exists already.
    #[error("Sandbox {0} already exists")]
    Exists(String),
    /// No sandbox of that id.
    #[error("Sandbox {0} does not exist")]
    NotFound(String),
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What runv was doing.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// state.json is unreadable.
    #[error("Parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { op, path, source }
}

/// Checks a sandbox or container id: it becomes a path component and a guest cgroup name.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// A new random id: 16 hex digits.
pub fn random_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom(&mut bytes).is_err() {
        // Fall back on time and pid: unique enough for one host.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let low = u64::try_from(now & u128::from(u64::MAX)).unwrap_or_default();
        bytes = (low ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// The VM is being started.
    Creating,
    /// The VM runs and its agent answered.
    Running,
    /// The VM is being torn down.
    Stopping,
    /// The VM is gone; only the state directory is left.
    Stopped,
}

/// A container of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// The process's command line.
    pub args: Vec<String>,
    /// Init pid in the guest, once started.
    pub guest_pid: Option<u32>,
    /// Exit status, once exited.
    pub exit_status: Option<i32>,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxState {
    /// Sandbox id.
    pub id: String,
    /// Lifecycle status.
    pub status: SandboxStatus,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    /// The process that owns the sandbox (runv or the shim).
    pub owner_pid: u32,
    /// `qemu` or `builtin`.
    pub hypervisor: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Processes of the VM.
    pub processes: Vec<ProcessInfo>,
    /// Containers.
    pub containers: Vec<ContainerState>,
    /// Agent version once it answered.
    pub agent_version: Option<String>,
    /// Guest kernel release once the agent answered.
    pub guest_kernel: Option<String>,
    /// The pod network runv plumbed, for its teardown (also by a later cleanup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkState>,
}

/// The pod network of a sandbox, as far as its teardown needs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkState {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The interfaces runv plumbed there.
    pub plumbed: Vec<crate::network::Plumbed>,
}

/// A sandbox's directory.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    /// The directory of sandbox `id` under `state_dir`; nothing is touched.
    pub fn new(state_dir: &Path, id: &str) -> Result<Self, StateError> {
        validate_id(id)?;
        Ok(Self {
            path: state_dir.join(id),
        })
    }

    /// Creates the directory, failing if it exists, and takes the owner lock.
    pub fn create(&self, id: &str) -> Result<OwnerLock, StateError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(io("Create state directory", parent))?;
        }
        match std::fs::create_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(e) => return Err(io("Create sandbox directory", &self.path)(e)),
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
            .map_err(io("Set permissions of", &self.path))?;
        OwnerLock::acquire(&self.path.join("lock"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory shared with the guest.
    pub fn shared(&self) -> PathBuf {
        self.path.join("shared")
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &SandboxState) -> Result<(), StateError> {
        let tmp = self.path.join("state.json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(|source| StateError::Parse {
            path: tmp.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(io("Write", &tmp))?;
        std::fs::rename(&tmp, self.state_file()).map_err(io("Rename", &tmp))
    }

    /// Reads the state.
    pub fn load(&self) -> Result<SandboxState, StateError> {
        let path = self.state_file();
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(
                self.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => io("Read", &path)(e),
        })?;
        serde_json::from_slice(&text).map_err(|source| StateError::Parse { path, source })
    }

    /// Whether a live process holds the owner lock.
    pub fn owner_alive(&self) -> bool {
        let Ok(file) = File::open(self.path.join("lock")) else {
            return false;
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_unlocked_on_drop) => false,
            Err(_) => true,
        }
    }

    /// Removes the directory and everything in it. Mounts below it must be gone first:
    /// this refuses to cross into another filesystem.
    pub fn remove(&self) -> Result<(), StateError> {
        remove_tree_same_fs(&self.path)
    }
}

/// Deletes a tree without crossing mount points: a leftover mount (a container root, a
/// volume, even a bind mount of the same filesystem) fails the removal instead of losing
/// the mounted files. Mount points are told by their mount id where the kernel gives one,
/// by their device otherwise.
fn remove_tree_same_fs(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let root = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("Stat", path)(e)),
    };
    let root_mount = crate::volumes::mount_id(path).ok();
    fn refuse(path: &Path) -> StateError {
        StateError::Io {
            op: "Refuse to remove a mount point",
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        }
    }
    fn walk(path: &Path, dev: u64, mount: Option<u64>) -> Result<(), StateError> {
        let meta = std::fs::symlink_metadata(path).map_err(io("Stat", path))?;
        let crossed = match mount {
            Some(root) => crate::volumes::mount_id(path).map_err(io("Stat", path))? != root,
            None => meta.dev() != dev,
        };
        if crossed {
            return Err(refuse(path));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(io("Read directory", path))? {
                let entry = entry.map_err(io("Read directory", path))?;
                walk(&entry.path(), dev, mount)?;
            }
            std::fs::remove_dir(path).map_err(io("Remove", path))
        } else {
            std::fs::remove_file(path).map_err(io("Remove", path))
        }
    }
    walk(path, root.dev(), root_mount)
}

/// The owner's exclusive lock on a sandbox directory; released when dropped (or when the
/// owner dies).
#[derive(Debug)]
pub struct OwnerLock {
    _lock: nix::fcntl::Flock<File>,
}

impl OwnerLock {
    fn acquire(path: &Path) -> Result<Self, StateError> {
        let file = File::create(path).map_err(io("Create", path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io("Lock", path)(std::io::Error::from(errno)))?;
        Ok(Self { _lock: lock })
    }
}

/// Every sandbox directory under `state_dir`, sorted by id.
pub fn list(state_dir: &Path) -> Result<Vec<SandboxDir>, StateError> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("Read directory", state_dir)(e)),
    };
    let mut dirs: Vec<SandboxDir> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| SandboxDir::new(state_dir, &e.file_name().to_string_lossy()).ok())
        .collect();
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str) -> SandboxState {
        SandboxState {
            id: id.into(),
            status: SandboxStatus::Running,
            created_unix: 1,
            owner_pid: std::process::id(),
            hypervisor: "qemu".into(),
            accel: "tcg".into(),
            vcpus: 1,
            memory_mib: 256,
            processes: vec![ProcessInfo {
                name: "qemu".into(),
                pid: 42,
            }],
            containers: vec![],
            agent_version: None,
            guest_kernel: None,
            network: None,
        }
    }

    #[test]
    fn ids() {
        for ok in ["a", "abc-1.2_3", &"x".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "-a", ".", "..", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        let id = random_id();
        assert_eq!(id.len(), 16);
        validate_id(&id).unwrap();
        assert_ne!(id, random_id());
    }

    #[test]
    fn create_save_load_list_remove() {
        let root = tempfile::tempdir().unwrap();
        let dir = SandboxDir::new(root.path(), "s1").unwrap();
        let lock = dir.create("s1").unwrap();
        assert!(matches!(dir.create("s1"), Err(StateError::Exists(_))));
        dir.save(&state("s1")).unwrap();
        assert_eq!(dir.load().unwrap(), state("s1"));
        assert!(dir.owner_alive());
        drop(lock);
        assert!(!dir.owner_alive());
        std::fs::create_dir_all(dir.shared().join("c/rootfs")).unwrap();
        assert_eq!(list(root.path()).unwrap().len(), 1);
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        assert!(list(root.path()).unwrap().is_empty());
        assert!(matches!(dir.load(), Err(StateError::NotFound(_))));
    }
}
