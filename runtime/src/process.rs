//! Helper processes of a sandbox (hypervisor, virtiofsd, vsock backend): spawned so they can
//! never outlive runv, logged to the sandbox directory, and stopped for sure.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// Errors starting or stopping a helper process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file could not be created.
    #[error("Create log file {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("Start {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running helper process.
#[derive(Debug)]
pub struct Helper {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Helper {
    /// Starts `cmd` with stdout and stderr appended to `log`, in its own process group (so a
    /// Ctrl-C at runv's terminal reaches runv, not the hypervisor), killed if runv dies
    /// (PR_SET_PDEATHSIG) and when the `Helper` is dropped.
    ///
    /// Spawn only from a thread that lives as long as the sandbox (the death signal follows
    /// the spawning thread): runv's runtime threads do.
    pub fn spawn(name: &'static str, cmd: Command, log: &Path) -> Result<Self, ProcessError> {
        Self::spawn_with_fds(name, cmd, log, &[])
    }

    /// [`Self::spawn`], with the descriptors `inherit` (open in runv) left open in the child
    /// under the same numbers, e.g. a tap the hypervisor is told about as `fd=N`.
    pub fn spawn_with_fds(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        inherit: &[std::os::fd::RawFd],
    ) -> Result<Self, ProcessError> {
        let inherit = inherit.to_vec();
        let log_err = |source| ProcessError::Log {
            path: log.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_err)?;
        let file2 = file.try_clone().map_err(log_err)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file2))
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the child between fork and exec and only makes the
        // async-signal-safe prctl, getppid and fcntl system calls.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &inherit {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let program = PathBuf::from(cmd.as_std().get_program());
        let child = cmd
            .spawn()
            .map_err(|source| ProcessError::Spawn { program, source })?;
        let pid = child.id().unwrap_or_default();
        tracing::debug!(name, pid, "started");
        Ok(Self {
            name,
            child,
            pid,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    /// The helper's name, e.g. `qemu`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if it has exited, without waiting.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let status = match self.child.wait().await {
            Ok(status) => status,
            // Only fails if the child was already reaped, which this type never lets happen.
            Err(_) => std::os::unix::process::ExitStatusExt::from_raw(0),
        };
        self.exited = Some(status);
        status
    }

    /// Waits up to `grace` for it to exit by itself, then kills it; always reaps it.
    pub async fn stop(&mut self, grace: Duration) -> ExitStatus {
        if !grace.is_zero() {
            if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
                return status;
            }
            tracing::debug!(
                name = self.name,
                pid = self.pid,
                "did not exit in time; killing"
            );
        }
        if self.try_exited().is_none() {
            // Kill the whole process group: helpers may have children of their own.
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.start_kill();
        }
        self.wait().await
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Helper {
    /// A helper still running when its owner goes (an error path, a panic) is killed and
    /// reaped here, so it never outlives the sandbox.
    fn drop(&mut self) {
        if self.try_exited().is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_output_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut helper = Helper::spawn("sh", cmd, &log).unwrap();
        assert_eq!(helper.wait().await.code(), Some(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");
        assert_eq!(helper.log_tail(1), "err");
    }

    #[tokio::test]
    async fn stop_kills_what_does_not_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let mut helper = Helper::spawn("sleep", cmd, &dir.path().join("s.log")).unwrap();
        let pid = helper.pid();
        let status = helper.stop(Duration::from_millis(50)).await;
        assert!(!status.success());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let err = Helper::spawn(
            "x",
            Command::new("/nonexistent/prog"),
            &dir.path().join("x.log"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/prog"), "{err}");
    }
}
