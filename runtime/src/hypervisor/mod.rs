//! The hypervisor boundary: one trait, one implementation per backend.
//!
//! Every backend gives the guest the same view: virtio-mmio devices, runv's kernel and
//! initramfs, the agent reachable over hybrid vsock, the sandbox's shared directory as a
//! virtio-fs filesystem, and the console on ttyS0 recorded in the sandbox directory.

mod builtin;
mod processes;
mod qemu;
mod socket;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use builtin::Builtin;
pub use qemu::Qemu;

use crate::host::Accel;
use crate::process::ProcessError;

/// What a sandbox VM is made of.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox id, for names and logs.
    pub id: String,
    /// The sandbox's directory: the backend puts its sockets and logs here.
    pub dir: PathBuf,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initrd: PathBuf,
    /// Guest kernel command line; the backend puts its own entries (how the guest reboots,
    /// its devices) before it.
    pub cmdline: String,
    /// Host directory shared with the guest over virtio-fs.
    pub shared_dir: PathBuf,
    /// virtio-fs tag of the shared directory.
    pub fs_tag: String,
    /// Read-only virtio-blk disks (container root images), given at boot.
    pub disks: Vec<VmDisk>,
    /// virtio-net devices, given at boot.
    pub nics: Vec<VmNic>,
}

/// A virtio-net device of a sandbox VM: an open tap the hypervisor inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    /// The tap's descriptor in runv (kept open by runv until the VM is gone).
    pub tap_fd: std::os::fd::RawFd,
    /// The guest's MAC (the pod interface's).
    pub mac: String,
    /// The interface's MTU, announced to the guest.
    pub mtu: u32,
}

/// A read-only virtio-blk disk of a sandbox VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// The raw image.
    pub path: PathBuf,
    /// Serial the guest finds it by (`/sys/block/vd*/serial`), at most 20 bytes.
    pub serial: String,
}

impl VmSpec {
    /// The guest console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The host end of the hybrid vsock device.
    pub fn vsock_uds(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
}

/// A process that belongs to a running sandbox.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    /// What it is: `qemu`, `virtiofsd`, `vhost-device-vsock`, `runv-vmm`.
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

/// Errors of a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A file the VM needs is missing.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A helper program is not installed.
    #[error("{0} is not installed (not found in PATH, /usr/local/bin or /usr/libexec); run `make install-deps`")]
    MissingBinary(String),
    /// A process could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A process exited while the VM was being set up.
    #[error("{name} exited during start ({status}): {log}")]
    ExitedEarly {
        /// Which.
        name: &'static str,
        /// Its status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// A helper did not create its socket in time.
    #[error("{name} did not create its socket {path} within {timeout:?}")]
    SocketTimeout {
        /// Which helper.
        name: &'static str,
        /// The socket it should create.
        path: PathBuf,
        /// How long runv waited.
        timeout: Duration,
    },
    /// The backend cannot run this VM.
    #[error("Unsupported: {0}")]
    Unsupported(String),
}

/// A way to run the sandbox VM.
#[async_trait::async_trait]
pub trait Hypervisor: Send {
    /// Starts the VM and its helper processes; returns once the hypervisor runs (not once
    /// the guest has booted).
    async fn start(&mut self, vm: &VmSpec) -> Result<(), HypervisorError>;

    /// If the hypervisor process has exited: a description with the end of its log.
    fn check_exited(&mut self) -> Option<HypervisorError>;

    /// Once something of the VM has exited: the error that names the cause, after giving the
    /// hypervisor up to `limit` to end too.
    async fn exit_error(&mut self, limit: Duration) -> Option<HypervisorError>;

    /// Waits up to `grace` for the VM to end by itself (after the guest powered off), then
    /// kills the hypervisor and every helper; reaps them all. Safe to call more than once.
    async fn stop(&mut self, grace: Duration);

    /// Kills the hypervisor and every helper at once and reaps them, without waiting on
    /// the async runtime (for `Drop` paths).
    fn kill_now(&mut self);

    /// The processes that make up the running VM.
    fn processes(&self) -> Vec<ProcessInfo>;

    /// Backend name.
    fn name(&self) -> &'static str;

    /// Accelerator in use.
    fn accel(&self) -> Accel;
}

/// Checks that the kernel and initramfs of a VM exist, before anything starts.
pub fn check_guest_files(vm: &VmSpec) -> Result<(), HypervisorError> {
    for (what, path) in [
        ("Guest kernel", &vm.kernel),
        ("Guest initramfs", &vm.initrd),
    ] {
        if !path.is_file() {
            return Err(HypervisorError::MissingFile {
                what,
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// Resolves a configured helper binary or says it is missing.
pub fn require_binary(name: &Path) -> Result<PathBuf, HypervisorError> {
    crate::config::resolve_binary(name)
        .ok_or_else(|| HypervisorError::MissingBinary(name.display().to_string()))
}

/// virtiofsd serving the sandbox's shared directory on `<dir>/virtiofsd.sock`.
pub(crate) fn virtiofsd_command(vm: &VmSpec, program: PathBuf) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(format!(
        "--socket-path={}",
        vm.dir.join("virtiofsd.sock").display()
    ))
    .arg(format!("--shared-dir={}", vm.shared_dir.display()))
    .arg("--cache=auto")
    .arg("--sandbox=namespace")
    .arg("--announce-submounts")
    .arg("--xattr");
    cmd
}
