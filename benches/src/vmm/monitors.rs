//! The two monitors under comparison and their command lines. Both get the same kernel, the
//! same guest RAM size backed by a memfd, one vCPU, and COM1 on their stdout (a pipe).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which monitor a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    RunvVmm,
    Qemu,
}

impl Monitor {
    pub const ALL: [Monitor; 2] = [Monitor::RunvVmm, Monitor::Qemu];

    pub fn name(self) -> &'static str {
        match self {
            Monitor::RunvVmm => "runv-vmm",
            Monitor::Qemu => "qemu microvm",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Monitor::RunvVmm => "runv_vmm",
            Monitor::Qemu => "qemu_microvm",
        }
    }
}

/// Paths of the binaries and the guest settings shared by every run.
#[derive(Debug, Clone)]
pub struct Setup {
    pub runv_vmm: PathBuf,
    pub qemu: PathBuf,
    pub memory_mib: u32,
}

impl Setup {
    /// `kernel` booted by `monitor` with `cmdline` (runv-vmm puts `console=ttyS0` and its
    /// own base options in front; QEMU gets `console=ttyS0` explicitly).
    pub fn command(&self, monitor: Monitor, kernel: &Path, cmdline: &str) -> Command {
        match monitor {
            Monitor::RunvVmm => {
                let mut c = Command::new(&self.runv_vmm);
                c.arg("--kernel")
                    .arg(kernel)
                    .args(["--vcpus", "1", "--memory-mib"])
                    .arg(self.memory_mib.to_string())
                    .args(["--serial", "stdio", "--cmdline", cmdline]);
                c
            }
            Monitor::Qemu => {
                let mib = self.memory_mib;
                let mut c = Command::new(&self.qemu);
                // acpi=off: the guest kernel has no ACPI, and QEMU then lists the virtio-mmio
                // devices on the command line (as runv's QEMU backend does). The RAM is a memfd
                // as in runv's QEMU backend (virtiofsd needs it shared) and in runv-vmm.
                c.args(["-M", "microvm,acpi=off,memory-backend=ram", "-accel", "kvm"])
                    .args(["-cpu", "host", "-smp", "1", "-m"])
                    .arg(format!("{mib}M"))
                    .arg("-object")
                    .arg(format!("memory-backend-memfd,id=ram,size={mib}M,share=on"))
                    .args(["-nodefaults", "-no-user-config", "-nographic"])
                    .args(["-serial", "stdio", "-monitor", "none"])
                    .arg("-kernel")
                    .arg(kernel)
                    .arg("-append")
                    .arg(format!("console=ttyS0 {cmdline}"));
                c
            }
        }
    }
}
