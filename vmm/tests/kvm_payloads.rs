//! KVM tests with guest payloads assembled here as bytes.
//!
//! They need /dev/kvm; without it each test says so on stderr and returns. On kvm-pvm
//! (software virtualization) real-mode payloads run; protected-mode payloads are tried and,
//! if kvm-pvm cannot run them, the test reports what failed.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runv_vmm::arch::x86_64::regs::EntryMode;
use runv_vmm::device_manager::bus::Bus;
use runv_vmm::device_manager::mmio::MmioManager;
use runv_vmm::devices::i8042::I8042;
use runv_vmm::devices::serial::{SerialDevice, SerialOut, SerialSink};
use runv_vmm::devices::virtio::block::Block;
use runv_vmm::devices::IrqTrigger;
use runv_vmm::metrics::VmmMetrics;
use runv_vmm::vstate::kvm::{kvm_available, KvmContext};
use runv_vmm::vstate::memory::{create_guest_memory, GuestMemoryMmap};
use runv_vmm::vstate::vcpu::{
    ExitReason, Vcpu, VcpuContext, VcpuControl, VcpuHandles, VmExitNotifier,
};
use runv_vmm::vstate::vm::Vm;
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x1000;

fn skip(why: &str) {
    // Written straight to stderr so the test harness does not capture it.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

struct Machine {
    vm: Vm,
    mem: GuestMemoryMmap,
    kvm: KvmContext,
    pio: Bus,
    mmio: Bus,
    exit: Arc<VmExitNotifier>,
    metrics: Arc<VmmMetrics>,
}

fn machine(mem_size: u64) -> Machine {
    let kvm = KvmContext::new().unwrap();
    let vm = Vm::new(&kvm).unwrap();
    let mem = create_guest_memory(&[(GuestAddress(0), mem_size)]).unwrap();
    vm.register_memory(&mem).unwrap();
    vm.setup_irqchip().unwrap();
    Machine {
        vm,
        mem,
        kvm,
        pio: Bus::new(),
        mmio: Bus::new(),
        exit: Arc::new(VmExitNotifier::new().unwrap()),
        metrics: Arc::new(VmmMetrics::default()),
    }
}

impl Machine {
    fn add_i8042(&mut self) {
        let irq = IrqTrigger::new().unwrap();
        self.vm.register_irqfd(&irq.0, 1).unwrap();
        self.pio
            .insert(
                Arc::new(Mutex::new(I8042::new(irq, Arc::clone(&self.exit)))),
                0x60,
                5,
            )
            .unwrap();
    }

    /// Runs one vCPU from `CODE` in `mode` until the VM stops or `timeout` passes.
    fn run(self, code: &[u8], mode: EntryMode, timeout: Duration) -> Option<ExitReason> {
        self.mem.write_slice(code, GuestAddress(CODE)).unwrap();
        let vcpu = Vcpu::new(&self.vm, 0).unwrap();
        let cpuid = self.kvm.supported_cpuid().unwrap();
        vcpu.configure_x86_64(&self.mem, &cpuid, 1, Some((mode, CODE)))
            .unwrap();
        let ctx = VcpuContext {
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            exit: Arc::clone(&self.exit),
            control: Arc::new(VcpuControl::default()),
            metrics: Arc::clone(&self.metrics),
        };
        let handles = VcpuHandles::start(vec![vcpu], ctx, Arc::new(|| {})).unwrap();
        let start = Instant::now();
        while self.exit.reason().is_none() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        handles.stop();
        self.exit.reason()
    }
}

/// `mov al, 0xfe; out 0x64, al; jmp $`: i8042 reset, the VM ends.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];

fn serial_machine(mem_size: u64) -> (Machine, vmm_sys_util::tempfile::TempFile) {
    let mut m = machine(mem_size);
    m.add_i8042();
    let log = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let irq = IrqTrigger::new().unwrap();
    m.vm.register_irqfd(&irq.0, 4).unwrap();
    let out = SerialOut::new(
        SerialSink::File(log.as_file().try_clone().unwrap()),
        Arc::new(AtomicBool::new(false)),
        m.metrics.device("serial"),
    );
    m.pio
        .insert(Arc::new(Mutex::new(SerialDevice::new(irq, out))), 0x3f8, 8)
        .unwrap();
    (m, log)
}

#[test]
fn real_mode_payload_writes_serial_and_resets() {
    if !kvm_available() {
        return skip("real_mode_payload_writes_serial_and_resets: /dev/kvm is not available");
    }
    let (m, log) = serial_machine(0x10_0000);
    let metrics = Arc::clone(&m.metrics);
    let mut code = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"runv\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(RESET);
    let reason = m.run(&code, EntryMode::Real, Duration::from_secs(10));
    assert_eq!(
        reason,
        Some(ExitReason::GuestShutdown("i8042 reset".into()))
    );
    let text = std::fs::read_to_string(log.as_path()).unwrap();
    assert_eq!(text, "runv\n");
    assert!(metrics.exits.io_out.get() >= 6);
}

#[test]
fn real_mode_payload_reads_virtio_mmio_and_notifies_queue() {
    if !kvm_available() {
        return skip("real_mode_payload_reads_virtio_mmio_and_notifies_queue: no /dev/kvm");
    }
    // 64 KiB of RAM; the virtio-mmio window sits at 0xd0000, reachable from real mode.
    let mut m = machine(0x1_0000);
    m.add_i8042();
    let disk = vmm_sys_util::tempfile::TempFile::new().unwrap();
    disk.as_file().set_len(4096).unwrap();
    let mut mgr = MmioManager::new(0xd_0000, 5, 23);
    let block = Block::new(disk.as_path(), true, "t", m.metrics.device("block0")).unwrap();
    let info = mgr
        .add(
            &m.vm,
            &mut m.mmio,
            &m.mem,
            "block0",
            Box::new(block),
            m.metrics.device("block0"),
        )
        .unwrap()
        .clone();
    let code: Vec<u8> = [
        &[0xb8, 0x00, 0xd0][..],         // mov ax, 0xd000
        &[0x8e, 0xd8],                   // mov ds, ax
        &[0x66, 0xa1, 0x00, 0x00],       // mov eax, [0x0]   magic
        &[0x26, 0x66, 0xa3, 0x00, 0x20], // mov [es:0x2000], eax
        &[0x66, 0xa1, 0x04, 0x00],       // mov eax, [0x4]   version
        &[0x26, 0x66, 0xa3, 0x04, 0x20], // mov [es:0x2004], eax
        &[0x66, 0xa1, 0x08, 0x00],       // mov eax, [0x8]   device id
        &[0x26, 0x66, 0xa3, 0x08, 0x20], // mov [es:0x2008], eax
        // mov dword [0x70], 1: Status = ACKNOWLEDGE; read it back into [es:0x200c]
        &[0x66, 0xc7, 0x06, 0x70, 0x00, 0x01, 0x00, 0x00, 0x00],
        &[0x66, 0xa1, 0x70, 0x00],
        &[0x26, 0x66, 0xa3, 0x0c, 0x20],
        // mov dword [0x50], 0: QueueNotify for queue 0
        &[0x66, 0xc7, 0x06, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00],
        RESET,
    ]
    .concat();
    let mem = m.mem.clone();
    let metrics = Arc::clone(&m.metrics);
    let reason = m.run(&code, EntryMode::Real, Duration::from_secs(10));
    assert_eq!(
        reason,
        Some(ExitReason::GuestShutdown("i8042 reset".into()))
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
        0x7472_6976
    );
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2004)).unwrap(), 2);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x2008)).unwrap(), 2);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x200c)).unwrap(), 1);
    let t = info.transport.lock().unwrap();
    assert_eq!(
        t.queue_evts()[0].read().unwrap(),
        1,
        "queue 0 eventfd did not fire"
    );
    // The Status write exits to the device; the notify goes through KVM's ioeventfd.
    assert_eq!(metrics.exits.mmio_read.get(), 4);
    assert_eq!(metrics.exits.mmio_write.get(), 1);
}

#[test]
fn protected_mode_payload_as_pvh_entry() {
    if !kvm_available() {
        return skip("protected_mode_payload_as_pvh_entry: no /dev/kvm");
    }
    let (m, log) = serial_machine(0x20_0000);
    // 32-bit code, flat segments, paging off: exactly the PVH entry state.
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"pm\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    // mov eax, [0x1ffff0]; mov [0x1ffff4], eax  (32-bit absolute addressing)
    code.extend_from_slice(&[0xa1, 0xf0, 0xff, 0x1f, 0x00, 0xa3, 0xf4, 0xff, 0x1f, 0x00]);
    code.extend_from_slice(RESET);
    m.mem
        .write_obj(0x1234_5678u32, GuestAddress(0x1f_fff0))
        .unwrap();
    let mem = m.mem.clone();
    let reason = m.run(&code, EntryMode::Pvh, Duration::from_secs(10));
    match reason {
        Some(ExitReason::GuestShutdown(_)) => {
            assert_eq!(std::fs::read_to_string(log.as_path()).unwrap(), "pm\n");
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress(0x1f_fff4)).unwrap(),
                0x1234_5678
            );
        }
        Some(ExitReason::GuestCrash(why)) => {
            skip(&format!(
                "protected_mode_payload_as_pvh_entry: this KVM cannot run the 32-bit entry: {why}"
            ));
        }
        other => panic!("unexpected end: {other:?}"),
    }
}

#[test]
fn long_mode_payload_as_linux64_entry() {
    if !kvm_available() {
        return skip("long_mode_payload_as_linux64_entry: no /dev/kvm");
    }
    let (m, log) = serial_machine(0x40_0000);
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"lm\n" {
        code.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    code.extend_from_slice(RESET);
    let reason = m.run(&code, EntryMode::Linux64, Duration::from_secs(10));
    match reason {
        Some(ExitReason::GuestShutdown(_)) => {
            assert_eq!(std::fs::read_to_string(log.as_path()).unwrap(), "lm\n");
        }
        Some(ExitReason::GuestCrash(why)) => {
            skip(&format!(
                "long_mode_payload_as_linux64_entry: this KVM cannot run the 64-bit entry: {why}"
            ));
        }
        other => panic!("unexpected end: {other:?}"),
    }
}
