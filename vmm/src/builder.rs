//! Assembles a [`Vmm`] from a [`VmmConfig`]: the boot steps, in order.
//!
//! 1. Validate the configuration; open KVM and check capabilities and the vCPU limit.
//! 2. Create guest memory (one memfd, MAP_SHARED) and register it with a new VM; create the
//!    in-kernel interrupt controller (and PIT on x86_64).
//! 3. Load the kernel (vmlinux with PVH note, or bzImage) and the initrd.
//! 4. Create the legacy devices (serial, i8042, boot timer) and the virtio-mmio devices
//!    (vsock, disks, net, fs), wiring irqfds and ioeventfds.
//! 5. Compose and write the kernel command line, the boot information (PVH start info or
//!    boot_params with e820) and the MP table.
//! 6. Create and configure the vCPUs (CPUID, MSRs, FPU, LAPIC, entry registers).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::api::server::{ApiError, ApiServer};
use crate::config::{parse_mac, ConfigError, SerialConfig, VmmConfig, DEFAULT_MAC};
use crate::device_manager::bus::Bus;
use crate::device_manager::mmio::{MmioManager, MmioManagerError};
use crate::devices::boot_timer::BootTimer;
use crate::devices::serial::{SerialOut, SerialSink, SocketConsole};
use crate::devices::virtio::block::device::{Block, BlockError};
use crate::devices::virtio::net::tap::{Tap, TapError};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vhost_user_fs::device::{FsError, VhostUserFs};
use crate::devices::virtio::vsock::muxer::MuxerError;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::metrics::VmmMetrics;
use crate::vmm::{start_instant, ConsoleInput, Vmm};
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{create_guest_memory, GuestMemoryMmap, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError, VmExitNotifier};
use crate::vstate::vm::{Vm, VmError};

/// Errors while building the VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid configuration.
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    /// KVM unusable.
    #[error("KVM is not usable")]
    Kvm(#[from] KvmError),
    /// More vCPUs than KVM allows.
    #[error("{0} vCPUs requested but KVM allows {1}")]
    TooManyVcpus(u8, usize),
    /// Guest memory.
    #[error("Cannot create guest memory")]
    Memory(#[from] MemoryError),
    /// VM setup.
    #[error("Cannot set up the VM")]
    Vm(#[from] VmError),
    /// A file cannot be opened.
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// Kernel/initrd loading or boot information.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot prepare the guest kernel")]
    Boot(#[from] crate::arch::x86_64::boot::BootError),
    /// MP table.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot write the MP table")]
    Mptable(#[from] crate::arch::x86_64::mptable::MptableError),
    /// Legacy devices.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot add legacy devices")]
    Legacy(#[from] crate::device_manager::legacy::LegacyError),
    /// aarch64 boot setup.
    #[cfg(target_arch = "aarch64")]
    #[error("Cannot prepare the guest")]
    Arch(#[from] crate::arch::aarch64::ArchError),
    /// vCPU setup.
    #[error("Cannot set up vCPUs")]
    Vcpu(#[from] VcpuError),
    /// virtio-mmio placement.
    #[error("Cannot add a virtio device")]
    Mmio(#[from] MmioManagerError),
    /// Disk.
    #[error("Cannot add a disk")]
    Block(#[from] BlockError),
    /// Tap.
    #[error("Cannot open the tap device")]
    Tap(#[from] TapError),
    /// Net device.
    #[error("Cannot set up the network device")]
    Net(#[source] std::io::Error),
    /// vsock.
    #[error("Cannot set up the vsock device")]
    Vsock(#[from] MuxerError),
    /// virtio-fs.
    #[error("Cannot set up the virtio-fs device")]
    Fs(#[from] FsError),
    /// Serial console socket.
    #[error("Cannot listen on the console socket {0}")]
    Console(PathBuf, #[source] std::io::Error),
    /// API socket.
    #[error("Cannot set up the API socket")]
    Api(#[from] ApiError),
    /// Internal eventfd.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Command line.
    #[error("Kernel command line contains a NUL byte")]
    Cmdline,
}

/// The command line: runv-vmm's entries, the device entries, then the user's.
pub fn compose_cmdline(base: &str, devices: &[String], user: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if !user.split_whitespace().any(|w| w.starts_with("console=")) {
        parts.push(crate::arch::current::DEFAULT_CONSOLE);
    }
    parts.push(base);
    parts.extend(devices.iter().map(String::as_str));
    if !user.trim().is_empty() {
        parts.push(user.trim());
    }
    parts.join(" ")
}

fn serial_sink(cfg: &SerialConfig) -> Result<(SerialSink, ConsoleInput), BuildError> {
    Ok(match cfg {
        SerialConfig::Stdio => (SerialSink::Stdout, ConsoleInput::Stdin),
        SerialConfig::None => (SerialSink::Null, ConsoleInput::None),
        SerialConfig::File { path } => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| BuildError::Open(path.clone(), e))?;
            (SerialSink::File(f), ConsoleInput::None)
        }
        SerialConfig::Unix { path } => {
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| BuildError::Console(path.clone(), e))?;
            l.set_nonblocking(true)
                .map_err(|e| BuildError::Console(path.clone(), e))?;
            let console = Arc::new(Mutex::new(SocketConsole::default()));
            (
                SerialSink::Socket(Arc::clone(&console)),
                ConsoleInput::Socket(l, console),
            )
        }
    })
}

/// A virtio device and its name in metrics.
type NamedDevice = (String, Box<dyn VirtioDevice>);

/// The virtio devices of `config`, with their metric names, in command-line order.
fn virtio_devices(
    config: &VmmConfig,
    metrics: &VmmMetrics,
) -> Result<Vec<NamedDevice>, BuildError> {
    let mut devs: Vec<NamedDevice> = Vec::new();
    if let Some(v) = &config.vsock {
        devs.push((
            "vsock".into(),
            Box::new(Vsock::new(
                v.guest_cid,
                &v.uds_path,
                metrics.device("vsock"),
            )?),
        ));
    }
    for (i, d) in config.disks.iter().enumerate() {
        let name = format!("block{i}");
        let serial = d.serial.clone().unwrap_or_else(|| format!("runv-disk{i}"));
        devs.push((
            name.clone(),
            Box::new(Block::new(
                &d.path,
                d.read_only,
                &serial,
                metrics.device(&name),
            )?),
        ));
    }
    if let Some(n) = &config.net {
        let mac = match &n.mac {
            Some(m) => parse_mac(m)?,
            None => DEFAULT_MAC,
        };
        let tap = Tap::open(&n.tap)?;
        devs.push((
            "net0".into(),
            Box::new(Net::new(tap, mac, metrics.device("net0")).map_err(BuildError::Net)?),
        ));
    }
    if let Some(fs) = &config.fs {
        devs.push((
            "fs0".into(),
            Box::new(VhostUserFs::new(
                &fs.socket,
                &fs.tag,
                metrics.device("fs0"),
            )?),
        ));
    }
    Ok(devs)
}

impl TryFrom<VmmConfig> for Vmm {
    type Error = BuildError;

    fn try_from(config: VmmConfig) -> Result<Self, Self::Error> {
        build(&config)
    }
}

struct Common {
    kvm: KvmContext,
    vm: Vm,
    mem: GuestMemoryMmap,
    metrics: Arc<VmmMetrics>,
    exit: Arc<VmExitNotifier>,
    panicked: Arc<AtomicBool>,
}

fn common(config: &VmmConfig) -> Result<Common, BuildError> {
    config.validate()?;
    let kvm = KvmContext::new()?;
    let vcpus = config.machine.vcpus;
    if usize::from(vcpus) > kvm.max_vcpus() {
        return Err(BuildError::TooManyVcpus(vcpus, kvm.max_vcpus()));
    }
    let mem_size = config.machine.memory_mib << 20;
    let mem = create_guest_memory(&crate::arch::current::arch_memory_ranges(mem_size))?;
    let vm = Vm::new(&kvm)?;
    vm.register_memory(&mem)?;
    Ok(Common {
        kvm,
        vm,
        mem,
        metrics: Arc::new(VmmMetrics::default()),
        exit: Arc::new(VmExitNotifier::new().map_err(BuildError::EventFd)?),
        panicked: Arc::new(AtomicBool::new(false)),
    })
}

fn open(path: &std::path::Path) -> Result<File, BuildError> {
    File::open(path).map_err(|e| BuildError::Open(path.to_path_buf(), e))
}

#[cfg(target_arch = "x86_64")]
fn build(config: &VmmConfig) -> Result<Vmm, BuildError> {
    use crate::arch::x86_64::{boot, layout, mptable, regs::EntryMode, BASE_CMDLINE};
    use crate::device_manager::legacy::{add_legacy_devices, legacy_irqs};
    use crate::devices::i8042::I8042;
    use crate::devices::serial::SerialDevice;

    let Common {
        kvm,
        vm,
        mem,
        metrics,
        exit,
        panicked,
    } = common(config)?;
    vm.setup_irqchip()?;

    let mut kernel = open(&config.kernel.path)?;
    let entry = boot::load_kernel(&mem, &mut kernel)?;
    let initrd = match &config.kernel.initrd {
        Some(p) => Some(boot::load_initrd(
            &mem,
            &mut open(p)?,
            entry.kernel_end,
            boot::initrd_addr_max(&entry),
        )?),
        None => None,
    };

    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let (sink, console) = serial_sink(&config.serial)?;
    let (serial_irq, kbd_irq) = legacy_irqs(&vm)?;
    let serial = SerialDevice::new(
        serial_irq,
        SerialOut::new(sink, Arc::clone(&panicked), metrics.device("serial")),
    );
    let boot_marks = Arc::new(Mutex::new(Vec::new()));
    let legacy = add_legacy_devices(
        &mut pio,
        serial,
        I8042::new(kbd_irq, Arc::clone(&exit)),
        BootTimer::new(start_instant(), Arc::clone(&boot_marks)),
    )?;

    let mut mgr = MmioManager::new(
        layout::MMIO_DEVICES_START,
        layout::IRQ_BASE,
        layout::IRQ_MAX,
    );
    for (name, dev) in virtio_devices(config, &metrics)? {
        mgr.add(&vm, &mut mmio, &mem, &name, dev, metrics.device(&name))?;
    }

    let cmdline = compose_cmdline(BASE_CMDLINE, &mgr.cmdline_entries(), &config.kernel.cmdline);
    boot::write_cmdline(&mem, &cmdline)?;
    match entry.mode {
        EntryMode::Pvh => boot::configure_pvh(&mem, initrd)?,
        _ => boot::configure_linux64(&mem, entry.setup_header, cmdline.len(), initrd)?,
    }
    let n = config.machine.vcpus;
    mptable::setup_mptable(&mem, n)?;

    let cpuid = kvm.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(usize::from(n));
    for id in 0..n {
        let vcpu = Vcpu::new(&vm, id)?;
        let boot_entry = (id == 0).then_some((entry.mode, entry.entry.0));
        vcpu.configure_x86_64(&mem, &cpuid, n, boot_entry)?;
        vcpus.push(vcpu);
    }

    let api = match &config.api {
        Some(a) => Some(ApiServer::new(&a.socket)?),
        None => None,
    };
    Ok(Vmm {
        vm,
        mem,
        vcpus,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        virtio: mgr.devices().to_vec(),
        serial: legacy.serial,
        i8042: legacy.i8042,
        console,
        api,
        exit,
        metrics,
        panicked,
        boot_marks,
        seccomp: config.seccomp,
        cmdline,
    })
}

#[cfg(target_arch = "aarch64")]
fn build(config: &VmmConfig) -> Result<Vmm, BuildError> {
    use crate::arch::aarch64 as arch;
    use crate::devices::serial::SerialDevice;
    use crate::devices::IrqTrigger;

    let Common {
        kvm: _kvm,
        vm,
        mem,
        metrics,
        exit,
        panicked,
    } = common(config)?;
    let n = config.machine.vcpus;
    let mut vcpus = Vec::with_capacity(usize::from(n));
    for id in 0..n {
        let vcpu = Vcpu::new(&vm, id)?;
        arch::regs::init_vcpu(&vm, &vcpu).map_err(arch::ArchError::Regs)?;
        vcpus.push(vcpu);
    }
    let gic = arch::gic::create_gic(&vm, u64::from(n))?;

    let kernel = arch::load_kernel(&mem, &mut open(&config.kernel.path)?)?;
    let initrd = match &config.kernel.initrd {
        Some(p) => Some(arch::load_initrd(&mem, &mut open(p)?)?),
        None => None,
    };

    let mut mmio = Bus::new();
    let (sink, console) = serial_sink(&config.serial)?;
    let serial_irq = IrqTrigger::new().map_err(BuildError::EventFd)?;
    vm.register_irqfd(&serial_irq.0, arch::layout::SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        SerialOut::new(sink, Arc::clone(&panicked), metrics.device("serial")),
    )));
    mmio.insert(
        serial.clone(),
        arch::layout::SERIAL_ADDR,
        arch::layout::SERIAL_SIZE,
    )
    .map_err(MmioManagerError::Bus)?;
    let boot_marks = Arc::new(Mutex::new(Vec::new()));
    mmio.insert(
        Arc::new(Mutex::new(BootTimer::new(
            start_instant(),
            Arc::clone(&boot_marks),
        ))),
        arch::layout::BOOT_TIMER_ADDR,
        arch::layout::BOOT_TIMER_SIZE,
    )
    .map_err(MmioManagerError::Bus)?;

    let mut mgr = MmioManager::new(
        arch::layout::MMIO_DEVICES_START,
        arch::layout::IRQ_BASE,
        arch::layout::IRQ_MAX,
    );
    for (name, dev) in virtio_devices(config, &metrics)? {
        mgr.add(&vm, &mut mmio, &mem, &name, dev, metrics.device(&name))?;
    }
    // On aarch64 the devices are described in the device tree, not on the command line.
    let cmdline = compose_cmdline(arch::BASE_CMDLINE, &[], &config.kernel.cmdline);
    if cmdline.contains('\0') {
        return Err(BuildError::Cmdline);
    }
    let virtio: Vec<(u64, u32)> = mgr.devices().iter().map(|d| (d.base, d.irq)).collect();
    let fdt = arch::fdt::create_fdt(
        &mem,
        &arch::fdt::FdtInputs {
            vcpus: u32::from(n),
            cmdline: &cmdline,
            initrd,
            gic_dist: gic.dist,
            gic_redist: gic.redist,
            virtio: &virtio,
        },
    )?;
    if let Some(boot) = vcpus.first() {
        arch::regs::setup_boot_regs(boot, kernel.entry.0, fdt.0).map_err(arch::ArchError::Regs)?;
    }
    let api = match &config.api {
        Some(a) => Some(ApiServer::new(&a.socket)?),
        None => None,
    };
    Ok(Vmm {
        vm,
        mem,
        vcpus,
        pio: Arc::new(Bus::new()),
        mmio: Arc::new(mmio),
        virtio: mgr.devices().to_vec(),
        serial,
        console,
        api,
        exit,
        metrics,
        panicked,
        boot_marks,
        seccomp: config.seccomp,
        cmdline,
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_order_and_console() {
        let c = compose_cmdline(
            "reboot=k",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            "quiet -- arg",
        );
        assert_eq!(
            c,
            format!(
                "{} reboot=k virtio_mmio.device=4K@0xd0000000:5 quiet -- arg",
                crate::arch::current::DEFAULT_CONSOLE
            )
        );
        let c = compose_cmdline("reboot=k", &[], "console=hvc0");
        assert_eq!(c, "reboot=k console=hvc0");
    }
}
