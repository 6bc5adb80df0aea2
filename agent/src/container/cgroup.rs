//! Container cgroups on the cgroup v2 hierarchy: `<cgroup-root>/runv/<container-id>`.
//!
//! In the guest every controller the agent enabled exists, so a limit that cannot be
//! applied is an error. On a host in dev mode controllers may be missing; then the
//! manager is lenient and skips such limits with a warning.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

/// The default CFS period, in microseconds.
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path}: controller for {file} is not available")]
    MissingController { path: PathBuf, file: &'static str },
    #[error("invalid resources: {0}")]
    Invalid(String),
}

/// Writes an existing cgroup file (never creates one: cgroupfs answers EACCES to that).
fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the cgroups of containers under one parent.
#[derive(Debug)]
pub struct CgroupManager {
    parent: PathBuf,
    strict: bool,
}

impl CgroupManager {
    /// Uses `<root>/runv` as the parent, creating it and enabling for its children the
    /// controllers it has.
    pub fn new(root: &Path, strict: bool) -> Result<Self, CgroupError> {
        let parent = root.join("runv");
        fs::create_dir_all(&parent).map_err(io_error(&parent))?;
        let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        let control = parent.join("cgroup.subtree_control");
        for name in available.split_whitespace() {
            if let Err(err) = write_file(&control, &format!("+{name}")) {
                tracing::warn!(controller = name, %err, "cannot enable controller for containers");
            }
        }
        Ok(Self { parent, strict })
    }

    /// Creates the cgroup of one container.
    pub fn create(&self, container_id: &str) -> Result<Cgroup, CgroupError> {
        let path = self.parent.join(container_id);
        fs::create_dir(&path).map_err(io_error(&path))?;
        Ok(Cgroup {
            path,
            strict: self.strict,
        })
    }
}

/// Finds the cgroup v2 hierarchy of this machine: `/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn default_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        return unified.to_path_buf();
    }
    let hybrid = unified.join("unified");
    if hybrid.join("cgroup.procs").exists() {
        return hybrid;
    }
    unified.to_path_buf()
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    strict: bool,
}

impl Cgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the limits of `resources`.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        for (file, value) in limits(resources)? {
            self.write_limit(file, &value)?;
        }
        Ok(())
    }

    fn write_limit(&self, file: &'static str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        match write_file(&path, value) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if self.strict {
                    Err(CgroupError::MissingController {
                        path: self.path.clone(),
                        file,
                    })
                } else {
                    tracing::warn!(cgroup = %self.path.display(), file, "controller missing, limit skipped");
                    Ok(())
                }
            }
            Err(source) => Err(CgroupError::Io { path, source }),
        }
    }

    /// Moves a process into the cgroup.
    pub fn add_process(&self, pid: Pid) -> Result<(), CgroupError> {
        let path = self.path.join("cgroup.procs");
        write_file(&path, &pid.as_raw().to_string()).map_err(io_error(&path))
    }

    /// The processes in the cgroup.
    pub fn procs(&self) -> Result<Vec<Pid>, CgroupError> {
        let path = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(Pid::from_raw)
            .collect())
    }

    /// Sends `signal` to every process in the cgroup; SIGKILL uses `cgroup.kill` where the
    /// kernel has it.
    pub fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        if signal == Signal::SIGKILL {
            let kill_file = self.path.join("cgroup.kill");
            if write_file(&kill_file, "1").is_ok() {
                return Ok(());
            }
        }
        for pid in self.procs()? {
            if let Err(err) = kill(pid, signal) {
                tracing::debug!(pid = pid.as_raw(), %err, "kill");
            }
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws the cgroup's processes and waits until the kernel reports
    /// the new state in `cgroup.events`.
    pub async fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let path = self.path.join("cgroup.freeze");
        write_file(&path, if frozen { "1" } else { "0" }).map_err(io_error(&path))?;
        let events = self.path.join("cgroup.events");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        // Freezing waits for every task to reach the freezer; a task stuck in an
        // uninterruptible sleep can delay it, so give up after a while.
        for _ in 0..500 {
            let text = fs::read_to_string(&events).map_err(io_error(&events))?;
            if text.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(CgroupError::Io {
            path: events,
            source: std::io::Error::new(
                ErrorKind::TimedOut,
                format!("still not \"{want}\" after 5 s"),
            ),
        })
    }

    /// Removes the cgroup, retrying while the kernel still counts exiting processes.
    pub async fn remove(&self) -> Result<(), CgroupError> {
        let mut attempts = 0;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
                Err(err) if attempts < 100 && err.raw_os_error() == Some(libc::EBUSY) => {
                    attempts += 1;
                    if attempts % 10 == 0 {
                        let _ = self.signal_all(Signal::SIGKILL);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(source) => {
                    return Err(CgroupError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// The files and values that implement `resources`.
pub fn limits(resources: &LinuxResources) -> Result<Vec<(&'static str, String)>, CgroupError> {
    let mut out = Vec::new();
    if let Some(memory) = resources.memory() {
        if let Some(max) = memory_max(memory.limit()) {
            out.push(("memory.max", max));
        }
        if let Some(swap) = swap_max(memory.swap(), memory.limit())? {
            out.push(("memory.swap.max", swap));
        }
    }
    if let Some(pids) = resources.pids() {
        out.push(("pids.max", pids_max(pids.limit())));
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(max) = cpu_max(cpu.quota(), cpu.period()) {
            out.push(("cpu.max", max));
        }
        if let Some(weight) = cpu_weight(cpu.shares()) {
            out.push(("cpu.weight", weight.to_string()));
        }
    }
    Ok(out)
}

/// `memory.max` from the OCI memory limit: negative is unlimited, absent is unset.
pub fn memory_max(limit: Option<i64>) -> Option<String> {
    limit.map(|l| if l < 0 { "max".into() } else { l.to_string() })
}

/// `memory.swap.max` from the OCI swap value, which counts memory plus swap (the cgroup v1
/// meaning), while cgroup v2 limits swap alone.
pub fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>, CgroupError> {
    let limit = limit.unwrap_or(0);
    match swap {
        // Unlimited memory with swap not given: both unlimited.
        None | Some(0) if limit < 0 => Ok(Some("max".into())),
        None | Some(0) => Ok(None),
        Some(s) if s < 0 => Ok(Some("max".into())),
        Some(_) if limit <= 0 => Err(CgroupError::Invalid(
            "memory.swap needs memory.limit".into(),
        )),
        Some(s) if s < limit => Err(CgroupError::Invalid(format!(
            "memory.swap {s} is below memory.limit {limit}"
        ))),
        Some(s) => Ok(Some((s - limit).to_string())),
    }
}

/// `pids.max` from the OCI pids limit: zero or negative is unlimited.
pub fn pids_max(limit: i64) -> String {
    if limit <= 0 {
        "max".into()
    } else {
        limit.to_string()
    }
}

/// `cpu.max` ("QUOTA PERIOD") from the CFS quota and period.
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    if quota.is_none() && period.is_none() {
        return None;
    }
    let period = period.filter(|p| *p > 0).unwrap_or(DEFAULT_CPU_PERIOD);
    let quota = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".into(),
    };
    Some(format!("{quota} {period}"))
}

/// `cpu.weight` (1..=10000) from cgroup v1 shares (2..=262144), mapped linearly.
pub fn cpu_weight(shares: Option<u64>) -> Option<u64> {
    let shares = shares.filter(|s| *s > 0)?.clamp(2, 262_144);
    Some(1 + ((shares - 2) * 9999) / 262_142)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory() {
        assert_eq!(memory_max(None), None);
        assert_eq!(memory_max(Some(-1)).as_deref(), Some("max"));
        assert_eq!(memory_max(Some(64 << 20)).as_deref(), Some("67108864"));
    }

    #[test]
    fn swap_is_converted_from_memory_plus_swap() {
        assert_eq!(swap_max(None, None).unwrap(), None);
        assert_eq!(swap_max(None, Some(-1)).unwrap().as_deref(), Some("max"));
        assert_eq!(
            swap_max(Some(-1), Some(100)).unwrap().as_deref(),
            Some("max")
        );
        assert_eq!(
            swap_max(Some(300), Some(100)).unwrap().as_deref(),
            Some("200")
        );
        assert_eq!(
            swap_max(Some(100), Some(100)).unwrap().as_deref(),
            Some("0")
        );
        assert!(swap_max(Some(50), Some(100)).is_err());
        assert!(swap_max(Some(50), None).is_err());
    }

    #[test]
    fn pids() {
        assert_eq!(pids_max(0), "max");
        assert_eq!(pids_max(-1), "max");
        assert_eq!(pids_max(32), "32");
    }

    #[test]
    fn cpu_quota_and_period() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(cpu_max(Some(50_000), None).as_deref(), Some("50000 100000"));
        assert_eq!(
            cpu_max(Some(20_000), Some(10_000)).as_deref(),
            Some("20000 10000")
        );
        assert_eq!(
            cpu_max(Some(-1), Some(50_000)).as_deref(),
            Some("max 50000")
        );
        assert_eq!(cpu_max(None, Some(50_000)).as_deref(), Some("max 50000"));
    }

    #[test]
    fn cpu_shares_to_weight() {
        assert_eq!(cpu_weight(None), None);
        assert_eq!(cpu_weight(Some(0)), None);
        assert_eq!(cpu_weight(Some(2)), Some(1));
        assert_eq!(cpu_weight(Some(1024)), Some(39));
        assert_eq!(cpu_weight(Some(262_144)), Some(10_000));
        assert_eq!(cpu_weight(Some(1 << 30)), Some(10_000));
    }

    #[test]
    fn limits_from_resources() {
        let resources: LinuxResources = serde_json::from_str(
            r#"{"memory": {"limit": 1048576}, "pids": {"limit": 10}, "cpu": {"shares": 1024}}"#,
        )
        .unwrap();
        let files: Vec<_> = limits(&resources).unwrap();
        assert_eq!(
            files,
            vec![
                ("memory.max", "1048576".to_string()),
                ("pids.max", "10".to_string()),
                ("cpu.weight", "39".to_string()),
            ]
        );
    }
}
