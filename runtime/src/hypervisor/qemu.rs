//! The QEMU backend: `qemu-system-* -M microvm` with vhost-user devices.
//!
//! QEMU runs the VM (KVM, or TCG where KVM cannot run a Linux guest); vhost-device-vsock
//! serves the vsock device and gives the host the hybrid-vsock Unix socket; virtiofsd serves
//! the shared directory. Guest memory is a shared memfd, which both vhost-user daemons map.

use std::path::PathBuf;
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

/// The guest's vsock context id.
pub const GUEST_CID: u32 = 3;

/// How long a vhost-user daemon may take to create its socket.
const DAEMON_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A sandbox VM run by QEMU.
#[derive(Debug)]
pub struct Qemu {
    binaries: BinariesConfig,
    accel: Accel,
    helpers: VmProcesses,
}

impl Qemu {
    /// A backend that will run QEMU with `accel`.
    pub fn new(binaries: BinariesConfig, accel: Accel) -> Self {
        Self {
            binaries,
            accel,
            helpers: VmProcesses::default(),
        }
    }

    /// QEMU's arguments for `vm`.
    pub fn qemu_args(&self, vm: &VmSpec) -> Vec<String> {
        let dir = &vm.dir;
        let mem = format!("{}M", vm.memory_mib);
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("runv-{},debug-threads=on", vm.id),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
        ];
        if cfg!(target_arch = "aarch64") {
            args.extend(["-M".into(), "virt,gic-version=3".into()]);
        } else {
            // acpi=off: QEMU then declares the virtio-mmio devices on the kernel command line
            // (the guest kernel has no ACPI).
            args.extend([
                "-M".into(),
                "microvm,acpi=off,x-option-roms=off,rtc=off,isa-serial=on".into(),
            ]);
        }
        match self.accel {
            Accel::Kvm => {
                args.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()])
            }
            Accel::Tcg => args.extend([
                "-accel".into(),
                "tcg,thread=multi".into(),
                "-cpu".into(),
                "max".into(),
            ]),
        }
        args.extend([
            "-smp".into(),
            vm.vcpus.to_string(),
            "-m".into(),
            mem.clone(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-machine".into(),
            "memory-backend=mem".into(),
            "-kernel".into(),
            vm.kernel.display().to_string(),
            "-initrd".into(),
            vm.initrd.display().to_string(),
            "-append".into(),
            // A guest reboot ends the VM (-no-reboot); triple fault is the fast way on microvm,
            // which has no keyboard controller. A panic reboots at once.
            format!("reboot=t panic=-1 {}", vm.cmdline),
            "-chardev".into(),
            format!("file,id=console,path={}", vm.console_log().display()),
            "-serial".into(),
            "chardev:console".into(),
            "-chardev".into(),
            format!(
                "socket,id=vsock,path={}",
                dir.join("vhost-vsock.sock").display()
            ),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock".into(),
            "-chardev".into(),
            format!("socket,id=fs,path={}", dir.join("virtiofsd.sock").display()),
            "-device".into(),
            format!(
                "vhost-user-fs-device,chardev=fs,tag={},queue-size=1024",
                vm.fs_tag
            ),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
        ]);
        for (i, nic) in vm.nics.iter().enumerate() {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net{i},fd={},vhost=off", nic.tap_fd),
                "-device".into(),
                format!(
                    "virtio-net-device,netdev=net{i},mac={},host_mtu={}",
                    nic.mac, nic.mtu
                ),
            ]);
        }
        for (i, disk) in vm.disks.iter().enumerate() {
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=disk{i},format=raw,readonly=on",
                    disk.path.display()
                ),
                "-device".into(),
                format!("virtio-blk-device,drive=disk{i},serial={}", disk.serial),
            ]);
        }
        args
    }

    fn vsock_daemon(&self, vm: &VmSpec, program: PathBuf) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vm.dir.join("vhost-vsock.sock").display(),
            vm.vsock_uds().display()
        ));
        cmd
    }
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    async fn start(&mut self, vm: &VmSpec) -> Result<(), HypervisorError> {
        check_guest_files(vm)?;
        let qemu = require_binary(&self.binaries.qemu)?;
        let vsock = require_binary(&self.binaries.vhost_device_vsock)?;
        let virtiofsd = require_binary(&self.binaries.virtiofsd)?;

        // The two daemons start side by side; QEMU connects to both at start.
        let vsock_cmd = self.vsock_daemon(vm, vsock);
        let fs_cmd = virtiofsd_command(vm, virtiofsd);
        self.helpers.push(Helper::spawn(
            "vhost-device-vsock",
            vsock_cmd,
            &vm.dir.join("vhost-device-vsock.log"),
        )?);
        self.helpers.push(Helper::spawn(
            "virtiofsd",
            fs_cmd,
            &vm.dir.join("virtiofsd.log"),
        )?);
        let sockets = [
            vm.dir.join("vhost-vsock.sock"),
            vm.dir.join("virtiofsd.sock"),
        ];
        for (helper, socket) in self.helpers.iter_mut().zip(sockets.iter()) {
            wait_for_socket(helper, socket, DAEMON_SOCKET_TIMEOUT).await?;
        }

        let mut cmd = Command::new(qemu);
        cmd.args(self.qemu_args(vm));
        tracing::debug!(sandbox = %vm.id, args = ?self.qemu_args(vm), "starting qemu");
        let taps: Vec<_> = vm.nics.iter().map(|n| n.tap_fd).collect();
        self.helpers.push(Helper::spawn_with_fds(
            "qemu",
            cmd,
            &vm.dir.join("qemu.log"),
            &taps,
        )?);
        Ok(())
    }

    fn check_exited(&mut self) -> Option<HypervisorError> {
        self.helpers.check_exited()
    }

    async fn stop(&mut self, grace: Duration) {
        self.helpers.stop("qemu", grace).await;
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
        "qemu"
    }

    fn accel(&self) -> Accel {
        self.accel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "t1".into(),
            dir: PathBuf::from("/run/runv/t1"),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            shared_dir: "/run/runv/t1/shared".into(),
            fs_tag: "runvshared".into(),
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    #[test]
    fn qemu_args_share_memory_and_wire_vhost_user_devices() {
        let q = Qemu::new(BinariesConfig::default(), Accel::Tcg);
        let args = q.qemu_args(&spec()).join(" ");
        assert!(
            args.contains("memory-backend-memfd,id=mem,size=512M,share=on"),
            "{args}"
        );
        assert!(args.contains("-smp 2"), "{args}");
        assert!(
            args.contains("vhost-user-vsock-device,chardev=vsock"),
            "{args}"
        );
        assert!(
            args.contains("vhost-user-fs-device,chardev=fs,tag=runvshared"),
            "{args}"
        );
        assert!(args.contains("-accel tcg"), "{args}");
        assert!(args.contains("-no-reboot"), "{args}");
        assert!(!args.contains("-drive"), "{args}");
        let mut vm = spec();
        vm.disks.push(super::super::VmDisk {
            path: "/cache/k.erofs".into(),
            serial: "rootfs-c1".into(),
        });
        let args = q.qemu_args(&vm).join(" ");
        assert!(
            args.contains(
                "-drive file=/cache/k.erofs,if=none,id=disk0,format=raw,readonly=on \
                 -device virtio-blk-device,drive=disk0,serial=rootfs-c1"
            ),
            "{args}"
        );
        if cfg!(target_arch = "x86_64") {
            assert!(args.contains("microvm,acpi=off"), "{args}");
        }
        let q = Qemu::new(BinariesConfig::default(), Accel::Kvm);
        assert!(q
            .qemu_args(&spec())
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }

    #[tokio::test]
    async fn missing_kernel_fails_before_anything_starts() {
        let mut q = Qemu::new(BinariesConfig::default(), Accel::Tcg);
        let err = q.start(&spec()).await.unwrap_err();
        assert!(
            err.to_string().contains("Guest kernel /k does not exist"),
            "{err}"
        );
        assert!(q.processes().is_empty());
    }
}
