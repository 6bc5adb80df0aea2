//! The builtin backend: runv-vmm, runv's own KVM monitor, with virtiofsd for the shared
//! directory. runv-vmm serves the vsock device itself (hybrid vsock on `vsock.sock`), so
//! there is no vsock daemon.

use std::time::Duration;

use tokio::process::Command;

use super::processes::VmProcesses;
use super::socket::wait_for_socket;
use super::{
    check_guest_files, require_binary, virtiofsd_command, Hypervisor, HypervisorError, ProcessInfo,
    VmSpec,
};
use crate::config::BinariesConfig;
use crate::host::Accel;
use crate::process::Helper;

/// How long virtiofsd may take to create its socket.
const DAEMON_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A sandbox VM run by runv-vmm.
#[derive(Debug)]
pub struct Builtin {
    binaries: BinariesConfig,
    helpers: VmProcesses,
}

impl Builtin {
    /// A backend that will run runv-vmm.
    pub fn new(binaries: BinariesConfig) -> Self {
        Self {
            binaries,
            helpers: VmProcesses::default(),
        }
    }

    /// runv-vmm's arguments for `vm`. runv-vmm puts its own `reboot=k panic=1` and the
    /// virtio-mmio device entries before the command line given here.
    pub fn vmm_args(vm: &VmSpec) -> Vec<String> {
        let dir = &vm.dir;
        let mut args = vec![
            "--id".into(),
            vm.id.clone(),
            "--kernel".into(),
            vm.kernel.display().to_string(),
            "--initrd".into(),
            vm.initrd.display().to_string(),
            "--cmdline".into(),
            vm.cmdline.clone(),
            "--vcpus".into(),
            vm.vcpus.to_string(),
            "--memory-mib".into(),
            vm.memory_mib.to_string(),
            "--serial".into(),
            vm.console_log().display().to_string(),
            "--vsock-uds".into(),
            vm.vsock_uds().display().to_string(),
            "--fs-socket".into(),
            dir.join("virtiofsd.sock").display().to_string(),
            "--fs-tag".into(),
            vm.fs_tag.clone(),
            "--api-socket".into(),
            dir.join("vmm.sock").display().to_string(),
        ];
        for disk in &vm.disks {
            args.extend([
                "--disk".into(),
                format!("{},ro,serial={}", disk.path.display(), disk.serial),
            ]);
        }
        args
    }
}

#[async_trait::async_trait]
impl Hypervisor for Builtin {
    async fn start(&mut self, vm: &VmSpec) -> Result<(), HypervisorError> {
        check_guest_files(vm)?;
        if !vm.nics.is_empty() {
            // runv-vmm opens its tap by name in its own namespace (`--net-tap`); taking the
            // pod's already-open tap is still to come. Refused rather than booted offline.
            return Err(HypervisorError::Unsupported(
                "a pod network with the builtin hypervisor (runv-vmm); use hypervisor \"qemu\" or --net none"
                    .to_string(),
            ));
        }
        let vmm = require_binary(&self.binaries.runv_vmm)?;
        let virtiofsd = require_binary(&self.binaries.virtiofsd)?;
        let fs = self.helpers.push(Helper::spawn(
            "virtiofsd",
            virtiofsd_command(vm, virtiofsd),
            &vm.dir.join("virtiofsd.log"),
        )?);
        wait_for_socket(fs, &vm.dir.join("virtiofsd.sock"), DAEMON_SOCKET_TIMEOUT).await?;
        let mut cmd = Command::new(vmm);
        cmd.args(Self::vmm_args(vm));
        tracing::debug!(sandbox = %vm.id, args = ?Self::vmm_args(vm), "starting runv-vmm");
        self.helpers.push(Helper::spawn(
            "runv-vmm",
            cmd,
            &vm.dir.join("runv-vmm.log"),
        )?);
        Ok(())
    }

    fn check_exited(&mut self) -> Option<HypervisorError> {
        self.helpers.check_exited()
    }

    async fn stop(&mut self, grace: Duration) {
        self.helpers.stop("runv-vmm", grace).await;
    }

    async fn exit_error(&mut self, limit: Duration) -> Option<HypervisorError> {
        self.helpers.exit_error(limit).await
    }

    fn kill_now(&mut self) {
        self.helpers.kill_now();
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        self.helpers.infos()
    }

    fn name(&self) -> &'static str {
        "builtin"
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn vmm_args_wire_console_vsock_fs_and_api() {
        let vm = VmSpec {
            id: "b1".into(),
            dir: PathBuf::from("/run/runv/b1"),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0 quiet".into(),
            shared_dir: "/run/runv/b1/shared".into(),
            fs_tag: "runvshared".into(),
            disks: vec![super::super::VmDisk {
                path: "/c/k.erofs".into(),
                serial: "rootfs-b1".into(),
            }],
            nics: Vec::new(),
        };
        let args = Builtin::vmm_args(&vm).join(" ");
        for expected in [
            "--kernel /k --initrd /i --cmdline console=ttyS0 quiet",
            "--vcpus 2 --memory-mib 512",
            "--serial /run/runv/b1/console.log",
            "--vsock-uds /run/runv/b1/vsock.sock",
            "--fs-socket /run/runv/b1/virtiofsd.sock --fs-tag runvshared",
            "--api-socket /run/runv/b1/vmm.sock",
            "--disk /c/k.erofs,ro,serial=rootfs-b1",
        ] {
            assert!(args.contains(expected), "{expected} in {args}");
        }
    }
}
