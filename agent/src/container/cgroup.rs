//! Container cgroups on the cgroup v2 hierarchy: `<cgroup-root>/runv/<container-id>`.
//!
//! In the guest every controller the agent enabled exists, so a limit that cannot be
//! applied is an error. On a host in dev mode controllers may be missing; then the
//! manager is lenient and skips such limits with a warning.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::bpf::DeviceProgram;
use super::device_rules::Policy;
pub use super::resources::{limits, validate, FieldError, Limit};

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
    /// `detail` names the spec field and the file.
    #[error("cgroup {path}: {detail} does not exist (controller not available?)")]
    MissingController { path: PathBuf, detail: String },
    /// `detail` names the spec field, the value and the file.
    #[error("cgroup {path}: {detail}: {source}")]
    Write {
        path: PathBuf,
        detail: String,
        source: std::io::Error,
    },
    /// `detail` says what failed, with the verifier's log when it refused the program.
    #[error("cgroup {path}: device program: {detail}: {source}")]
    DeviceProgram {
        path: PathBuf,
        detail: String,
        source: nix::errno::Errno,
    },
    #[error("{0}")]
    Invalid(#[from] FieldError),
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
            device_program: Mutex::new(None),
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
    /// The device program attached to the cgroup, kept so an update can replace it.
    device_program: Mutex<Option<DeviceProgram>>,
}

impl Cgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets up a new container's cgroup: the limits of `resources` and the device
    /// program, which every container gets (the spec's rules, or none, followed by the
    /// default devices), before its init process runs anything.
    pub fn setup(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        match resources {
            Some(resources) => {
                self.apply(resources)?;
                if resources.devices().is_none() {
                    self.set_devices(&[])?;
                }
                Ok(())
            }
            None => self.set_devices(&[]),
        }
    }

    /// Writes the limits of `resources` and, when it has device rules, replaces the
    /// device program. Used at create and by UpdateContainer; everything is validated
    /// before anything is written.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let limits = limits(resources)?;
        let policy = resources
            .devices()
            .as_deref()
            .map(Policy::from_spec)
            .transpose()?;
        for limit in &limits {
            self.write_limit(limit)?;
        }
        if let Some(policy) = policy {
            self.attach_devices(&policy)?;
        }
        Ok(())
    }

    /// Replaces the device program with one for `rules`.
    pub fn set_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
        self.attach_devices(&Policy::from_spec(rules)?)
    }

    /// Loads and attaches the program for `policy`, then detaches the one it replaces.
    /// Both are attached with BPF_F_ALLOW_MULTI, and the kernel lets an access through
    /// only when every program allows it, so the switch never allows more than either.
    fn attach_devices(&self, policy: &Policy) -> Result<(), CgroupError> {
        let mut slot = self
            .device_program
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bpf_error = |what: &str, source, log: String| CgroupError::DeviceProgram {
            path: self.path.clone(),
            detail: if log.is_empty() {
                what.to_string()
            } else {
                format!("{what} (verifier: {log})")
            },
            source,
        };
        let attached = DeviceProgram::load(&policy.program())
            .map_err(|(errno, log)| bpf_error("load", errno, log))
            .and_then(|program| {
                let dir = fs::File::open(&self.path).map_err(io_error(&self.path))?;
                program
                    .attach(dir.as_fd())
                    .map_err(|errno| bpf_error("attach", errno, String::new()))?;
                Ok((program, dir))
            });
        let (program, dir) = match attached {
            Ok(attached) => attached,
            Err(err) if !self.strict => {
                tracing::warn!(cgroup = %self.path.display(), %err, "device rules skipped");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if let Some(old) = slot.take() {
            if let Err(errno) = old.detach(dir.as_fd()) {
                // Still attached, the old program only ever denies more.
                tracing::warn!(cgroup = %self.path.display(), id = old.id(), %errno, "detach old device program");
            }
        }
        tracing::debug!(cgroup = %self.path.display(), id = program.id(), "device program attached");
        *slot = Some(program);
        Ok(())
    }

    /// Detaches the device program (removing the cgroup would drop it too).
    fn detach_devices(&self) {
        let program = self
            .device_program
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(program) = program {
            let detached = fs::File::open(&self.path)
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .and_then(|dir| program.detach(dir.as_fd()));
            if let Err(errno) = detached {
                tracing::debug!(cgroup = %self.path.display(), %errno, "detach device program");
            }
        }
    }

    fn write_limit(&self, limit: &Limit) -> Result<(), CgroupError> {
        let mut target = (&limit.file, &limit.value);
        if let Some((file, value)) = &limit.alternative {
            if !self.path.join(&limit.file).exists() {
                target = (file, value);
            }
        }
        let (file, value) = target;
        let path = self.path.join(file);
        match write_file(&path, value) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound && limit.optional => {
                tracing::debug!(cgroup = %self.path.display(), file, "not in this kernel, skipped");
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if self.strict || limit.required {
                    Err(CgroupError::MissingController {
                        path: self.path.clone(),
                        detail: format!("{}: {file}", limit.field),
                    })
                } else {
                    tracing::warn!(cgroup = %self.path.display(), file, field = limit.field, "controller missing, limit skipped");
                    Ok(())
                }
            }
            Err(source) => Err(CgroupError::Write {
                path: self.path.clone(),
                detail: format!("{}: write {value:?} to {file}", limit.field),
                source,
            }),
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
        self.detach_devices();
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

/// `memory.max` from the OCI memory limit: negative is unlimited, absent is unset.
pub fn memory_max(limit: Option<i64>) -> Option<String> {
    limit.map(|l| if l < 0 { "max".into() } else { l.to_string() })
}

/// `memory.swap.max` from the OCI swap value, which counts memory plus swap (the cgroup v1
/// meaning), while cgroup v2 limits swap alone.
pub fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>, FieldError> {
    let limit = limit.unwrap_or(0);
    match swap {
        // Unlimited memory with swap not given: both unlimited.
        None | Some(0) if limit < 0 => Ok(Some("max".into())),
        None | Some(0) => Ok(None),
        Some(s) if s < 0 => Ok(Some("max".into())),
        Some(_) if limit <= 0 => Err(FieldError::new(
            "linux.resources.memory.swap",
            "needs linux.resources.memory.limit (swap counts memory plus swap)",
        )),
        Some(s) if s < limit => Err(FieldError::new(
            "linux.resources.memory.swap",
            format!("{s} is below memory.limit {limit} (swap counts memory plus swap)"),
        )),
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
}
