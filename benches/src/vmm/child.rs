//! Monitor processes under a guard that kills and reaps them on every path, a scratch
//! directory removed on drop, and reads from a child's pipe with a deadline.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running monitor; killed (SIGKILL) and reaped when dropped.
pub struct Guard {
    child: Child,
    /// Set just before the spawn: time zero of every measurement.
    pub started: Instant,
    name: &'static str,
}

impl Guard {
    /// Spawns `cmd` with stdin closed and stdout and stderr piped.
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<Guard> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call, prctl.
        unsafe {
            cmd.pre_exec(|| {
                // Even if the bench itself is killed, the monitor does not outlive it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        Ok(Guard {
            child,
            started,
            name,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&mut self) -> Result<ChildStdout> {
        self.child.stdout.take().context("stdout already taken")
    }

    /// Fails with the monitor's stderr when it has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let err = self.kill_and_stderr();
            bail!("{} exited early ({status}): {}", self.name, err.trim());
        }
        Ok(())
    }

    /// Kills the monitor, reaps it and returns what it wrote on stderr.
    pub fn kill_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        // The child is dead, so its stderr ends at EOF.
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `fd` is readable or `deadline` passes.
fn wait_readable(fd: &impl AsRawFd, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("poll");
    }
    if n == 0 {
        bail!("timed out");
    }
    Ok(())
}

/// Reads from `r` until `done` holds for what has been read; returns the time when it did.
pub fn read_until(
    r: &mut ChildStdout,
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Result<(Instant, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        wait_readable(r, deadline)
            .with_context(|| format!("after {:?}", String::from_utf8_lossy(&got)))?;
        let n = r.read(&mut buf)?;
        let now = Instant::now();
        if n == 0 {
            bail!("EOF after {:?}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&buf[..n]);
        if done(&got) {
            return Ok((now, got));
        }
    }
}

/// A scratch directory, removed with everything in it when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Result<ScratchDir> {
        let p = std::env::temp_dir().join(format!("runv-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(ScratchDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
