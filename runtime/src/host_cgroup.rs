//! The sandbox's cgroup on the host: the hypervisor and its helpers are accounted and
//! limited where the orchestrator expects the pod (the sandbox container's
//! `linux.cgroupsPath`).
//!
//! The caller (the shim) joins the cgroup itself before it starts the sandbox, so every
//! process it spawns is born inside it, including the ones a helper forks on its own. It
//! leaves again before removing the cgroup. Both cgroup v2 and the v1 hierarchies of a
//! hybrid host are handled: the path is made in each mounted hierarchy.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A host cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    /// The path cannot be used.
    #[error("cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mount_point: PathBuf,
    /// `/proc/self/cgroup`'s key for it: the controllers ("cpu,cpuacct", "name=systemd"),
    /// empty for cgroup v2.
    key: String,
}

/// The cgroup hierarchies mounted on this host, from /proc/self/mountinfo.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS ... - FSTYPE SOURCE SUPER_OPTIONS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let tail: Vec<&str> = right.split_whitespace().collect();
        let (Some(mount_point), Some(fs_type)) = (fields.get(4), tail.first()) else {
            continue;
        };
        let key = match *fs_type {
            "cgroup2" => String::new(),
            "cgroup" => {
                let options = tail.get(2).copied().unwrap_or_default();
                options
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro" && !o.starts_with("release_agent"))
                    .filter(|o| !matches!(*o, "nosuid" | "nodev" | "noexec" | "relatime"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
            _ => continue,
        };
        if out.iter().any(|h: &Hierarchy| h.key == key) {
            continue;
        }
        out.push(Hierarchy {
            mount_point: PathBuf::from(mount_point),
            key,
        });
    }
    out
}

/// The current process's cgroup in each hierarchy, from /proc/self/cgroup.
fn current(proc_cgroup: &str, key: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let same = controllers == key
            || (!key.is_empty() && {
                let mut a: Vec<&str> = controllers.split(',').collect();
                let mut b: Vec<&str> = key.split(',').collect();
                a.sort_unstable();
                b.sort_unstable();
                a == b
            });
        same.then(|| path.to_string())
    })
}

/// Checks a `linux.cgroupsPath` of the cgroupfs form (`/parent/child`); the systemd form
/// (`slice:prefix:name`) is not handled here.
fn relative(path: &str) -> Result<PathBuf, HostCgroupError> {
    let invalid = |reason| HostCgroupError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.contains(':') {
        return Err(invalid(
            "the systemd form (slice:prefix:name) is not supported",
        ));
    }
    let rel = PathBuf::from(path.trim_start_matches('/'));
    if rel.as_os_str().is_empty() {
        return Err(invalid("empty"));
    }
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid("must not contain . or .."));
    }
    Ok(rel)
}

/// Where one hierarchy's part of the cgroup lives, and where the process came from.
#[derive(Debug)]
struct Joined {
    dir: PathBuf,
    /// Directories this cgroup created, innermost first.
    created: Vec<PathBuf>,
    /// The `cgroup.procs` the process was in before.
    original_procs: PathBuf,
}

/// The sandbox's host cgroup, joined by the calling process.
#[derive(Debug)]
pub struct HostCgroup {
    path: String,
    joined: Vec<Joined>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostCgroupError {
    let path = path.to_path_buf();
    move |source| HostCgroupError::Io { op, path, source }
}

/// A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
fn inherit_cpuset(dir: &Path) -> Result<(), HostCgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        let current = fs::read_to_string(&own).unwrap_or_default();
        if !current.trim().is_empty() {
            continue;
        }
        let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
        if !value.trim().is_empty() {
            fs::write(&own, value.trim()).map_err(io_err("write", &own))?;
        }
    }
    Ok(())
}

impl HostCgroup {
    /// Creates `path` in every cgroup hierarchy and moves the calling process into it.
    pub fn join(path: &str) -> Result<Self, HostCgroupError> {
        let rel = relative(path)?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
        let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("read", Path::new("/proc/self/cgroup")))?;
        let mut cgroup = Self {
            path: path.to_string(),
            joined: Vec::new(),
        };
        for h in hierarchies(&mountinfo) {
            let Some(from) = current(&proc_cgroup, &h.key) else {
                continue;
            };
            let dir = h.mount_point.join(&rel);
            let mut created = Vec::new();
            let mut missing = Vec::new();
            let mut probe = dir.as_path();
            while !probe.exists() && probe != h.mount_point {
                missing.push(probe.to_path_buf());
                match probe.parent() {
                    Some(p) => probe = p,
                    None => break,
                }
            }
            let original_procs = h
                .mount_point
                .join(from.trim_start_matches('/'))
                .join("cgroup.procs");
            let result = (|| {
                for d in missing.iter().rev() {
                    fs::create_dir(d).map_err(io_err("create", d))?;
                    created.insert(0, d.clone());
                    if h.key.split(',').any(|c| c == "cpuset") {
                        inherit_cpuset(d)?;
                    }
                }
                let procs = dir.join("cgroup.procs");
                fs::write(&procs, std::process::id().to_string()).map_err(io_err("join", &procs))
            })();
            cgroup.joined.push(Joined {
                dir,
                created,
                original_procs,
            });
            if let Err(e) = result {
                cgroup.leave_and_remove();
                return Err(e);
            }
        }
        tracing::info!(path, "joined the sandbox's host cgroup");
        Ok(cgroup)
    }

    /// The path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The cgroup's directory in each hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        self.joined.iter().map(|j| j.dir.as_path()).collect()
    }

    /// Moves the calling process back where it came from and removes what `join` created
    /// (once the processes born inside have gone).
    pub fn leave_and_remove(&mut self) {
        let pid = std::process::id().to_string();
        for joined in &self.joined {
            if let Err(e) = fs::write(&joined.original_procs, &pid) {
                tracing::warn!(path = %joined.original_procs.display(), error = %e, "leave the host cgroup");
            }
        }
        for joined in std::mem::take(&mut self.joined) {
            for dir in &joined.created {
                remove_dir_retrying(dir);
            }
        }
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        self.leave_and_remove();
    }
}

/// Removes an empty cgroup directory, giving exiting processes a moment to leave it.
fn remove_dir_retrying(dir: &Path) {
    for attempt in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 49 => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "remove host cgroup");
                return;
            }
        }
    }
}

/// Removes `path` from every hierarchy where it is empty: the cleanup after a shim that
/// was killed inside it. Missing directories are fine.
pub fn remove(path: &str) -> Result<(), HostCgroupError> {
    let rel = relative(path)?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    for h in hierarchies(&mountinfo) {
        remove_dir_retrying(&h.mount_point.join(&rel));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,xattr,name=systemd
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
";

    #[test]
    fn hierarchies_are_read_from_mountinfo() {
        let found = hierarchies(MOUNTINFO);
        let keys: Vec<&str> = found.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["", "cpu,cpuacct", "xattr,name=systemd", "memory"]);
        assert_eq!(
            found[1].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn current_cgroup_per_hierarchy() {
        let proc_cgroup = "4:memory:/a/b\n2:cpuacct,cpu:/c\n0::/d\n";
        assert_eq!(current(proc_cgroup, "memory").as_deref(), Some("/a/b"));
        assert_eq!(current(proc_cgroup, "cpu,cpuacct").as_deref(), Some("/c"));
        assert_eq!(current(proc_cgroup, "").as_deref(), Some("/d"));
        assert_eq!(current(proc_cgroup, "pids"), None);
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(
            relative("/k8s.io/abc").unwrap(),
            PathBuf::from("k8s.io/abc")
        );
        assert!(relative("kubepods.slice:cri-containerd:abc")
            .unwrap_err()
            .to_string()
            .contains("systemd form"));
        assert!(relative("/a/../b").is_err());
        assert!(relative("/").is_err());
    }
}
