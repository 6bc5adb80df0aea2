//! vCPUs: per-architecture register setup and the run loop.
//!
//! Each vCPU runs on its own thread. Port I/O and MMIO exits go to the [`Bus`]es; exits that
//! end the VM are reported once through a [`VmExitNotifier`]. Pausing uses a shared
//! [`VcpuControl`] and a signal that knocks the thread out of KVM_RUN.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::device_manager::bus::Bus;
use crate::metrics::VmmMetrics;

use super::vm::Vm;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// Register setup failed.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot set up vCPU registers")]
    Regs(#[from] crate::arch::x86_64::regs::RegsError),
    /// Register setup failed.
    #[cfg(target_arch = "aarch64")]
    #[error("Cannot set up vCPU registers")]
    Regs(#[from] crate::arch::aarch64::regs::RegsError),
    /// The kick signal handler cannot be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread cannot be spawned.
    #[error("Cannot spawn the vCPU thread")]
    Spawn(#[source] std::io::Error),
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset or power-off (i8042 reset, PSCI, HLT with nothing left).
    GuestShutdown(String),
    /// The guest crashed (panic, triple fault, KVM internal or entry error).
    GuestCrash(String),
    /// Forced stop after a shutdown request timed out.
    Forced,
    /// The monitor failed.
    VmmError(String),
}

/// Collects the first exit reason and wakes the main loop.
#[derive(Debug)]
pub struct VmExitNotifier {
    reason: Mutex<Option<ExitReason>>,
    set: AtomicBool,
    evt: EventFd,
}

impl VmExitNotifier {
    /// New notifier.
    pub fn new() -> std::io::Result<Self> {
        Ok(VmExitNotifier {
            reason: Mutex::new(None),
            set: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one was recorded before, and signals the event.
    pub fn notify(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.set.store(true, Ordering::SeqCst);
        // A full eventfd counter still wakes the reader, so the error can be ignored.
        let _ = self.evt.write(1);
    }

    /// Whether an exit was recorded (cheap: no lock).
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd signalled on exit.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Stopping,
}

/// Pause/resume/stop control shared by all vCPU threads.
#[derive(Debug)]
pub struct VcpuControl {
    state: Mutex<(RunState, usize)>,
    cond: Condvar,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            state: Mutex::new((RunState::Running, 0)),
            cond: Condvar::new(),
        }
    }
}

impl VcpuControl {
    fn set(&self, s: RunState) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = s;
        self.cond.notify_all();
    }

    /// Blocks while paused; returns false when the vCPU must stop.
    fn wait_runnable(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 == RunState::Paused {
            st.1 += 1;
            self.cond.notify_all();
            while st.0 == RunState::Paused {
                st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.1 -= 1;
        }
        st.0 == RunState::Running
    }

    fn paused_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    fn is_running(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 == RunState::Running
    }
}

/// What the vCPU loop needs besides its KVM fd.
#[derive(Clone, Debug)]
pub struct VcpuContext {
    /// Port I/O bus (x86_64 only; empty elsewhere).
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Exit reporting.
    pub exit: Arc<VmExitNotifier>,
    /// Pause/resume.
    pub control: Arc<VcpuControl>,
    /// Counters.
    pub metrics: Arc<VmmMetrics>,
}

/// One vCPU.
#[derive(Debug)]
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

/// What one exit means for the loop.
enum Step {
    Continue,
    Stop(ExitReason),
}

impl Vcpu {
    /// Creates vCPU `id`.
    pub fn new(vm: &Vm, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        Ok(Vcpu { id, fd })
    }

    /// The vCPU index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The KVM vCPU fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// x86_64: CPUID, MSRs, FPU, LAPIC; the boot vCPU also gets entry registers.
    #[cfg(target_arch = "x86_64")]
    pub fn configure_x86_64<M: vm_memory::GuestMemory>(
        &self,
        mem: &M,
        supported_cpuid: &kvm_bindings::CpuId,
        vcpu_count: u8,
        entry: Option<(crate::arch::x86_64::regs::EntryMode, u64)>,
    ) -> Result<(), VcpuError> {
        use crate::arch::x86_64::{cpuid, regs};
        let cpuid = cpuid::cpuid_for_vcpu(supported_cpuid, self.id, vcpu_count);
        self.fd.set_cpuid2(&cpuid).map_err(VcpuError::SetCpuid)?;
        regs::setup_msrs(&self.fd)?;
        regs::setup_fpu(&self.fd)?;
        regs::setup_lint(&self.fd)?;
        if let Some((mode, addr)) = entry {
            regs::setup_regs(&self.fd, mode, addr)?;
            regs::setup_sregs(mem, &self.fd, mode)?;
        }
        Ok(())
    }

    /// Handles one KVM_RUN.
    fn run_once(&mut self, ctx: &VcpuContext) -> Step {
        let m = &ctx.metrics.exits;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    m.io_out.inc();
                    if !ctx.pio.write(u64::from(port), data) {
                        m.unhandled.inc();
                    }
                    Step::Continue
                }
                VcpuExit::IoIn(port, data) => {
                    m.io_in.inc();
                    if !ctx.pio.read(u64::from(port), data) {
                        m.unhandled.inc();
                        data.fill(0xff);
                    }
                    Step::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    m.mmio_read.inc();
                    if !ctx.mmio.read(addr, data) {
                        m.unhandled.inc();
                        data.fill(0);
                    }
                    Step::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    m.mmio_write.inc();
                    if !ctx.mmio.write(addr, data) {
                        m.unhandled.inc();
                    }
                    Step::Continue
                }
                VcpuExit::Hlt => {
                    m.hlt.inc();
                    Step::Stop(ExitReason::GuestShutdown(format!(
                        "vCPU {} halted",
                        self.id
                    )))
                }
                VcpuExit::Shutdown => {
                    m.shutdown.inc();
                    Step::Stop(ExitReason::GuestCrash(format!(
                        "vCPU {}: triple fault (KVM_EXIT_SHUTDOWN)",
                        self.id
                    )))
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    m.fail_entry.inc();
                    Step::Stop(ExitReason::GuestCrash(format!(
                        "vCPU {}: VM entry failed, reason {reason:#x} on host cpu {cpu}",
                        self.id
                    )))
                }
                VcpuExit::InternalError => {
                    m.internal_error.inc();
                    let detail = self.internal_error_detail();
                    Step::Stop(ExitReason::GuestCrash(format!(
                        "vCPU {}: KVM internal error: {detail}",
                        self.id
                    )))
                }
                VcpuExit::SystemEvent(kind, _) => {
                    m.system_event.inc();
                    match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN
                        | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                            Step::Stop(ExitReason::GuestShutdown(format!("system event {kind}")))
                        }
                        _ => Step::Stop(ExitReason::GuestCrash(format!("system event {kind}"))),
                    }
                }
                VcpuExit::Intr => {
                    m.interrupted.inc();
                    Step::Continue
                }
                other => {
                    m.other.inc();
                    Step::Stop(ExitReason::GuestCrash(format!(
                        "vCPU {}: unexpected exit {other:?}",
                        self.id
                    )))
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                m.interrupted.inc();
                Step::Continue
            }
            Err(e) => Step::Stop(ExitReason::VmmError(format!(
                "vCPU {}: KVM_RUN failed: {e}",
                self.id
            ))),
        }
    }

    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal`
        // member of the exit union; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..n]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        let what = match internal.suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "delivery event",
            _ => "unknown",
        };
        format!(
            "suberror {} ({what}), data [{}]",
            internal.suberror,
            data.join(", ")
        )
    }

    /// Runs until the VM stops; reports the reason through `ctx.exit`.
    pub fn run_loop(mut self, ctx: VcpuContext) {
        loop {
            if !ctx.control.wait_runnable() {
                return;
            }
            match self.run_once(&ctx) {
                // A device may have ended the VM (i8042 reset): stop running the guest.
                Step::Continue if ctx.exit.is_set() => return,
                Step::Continue => {}
                Step::Stop(reason) => {
                    ctx.exit.notify(reason);
                    return;
                }
            }
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

static KICK_HANDLER_SET: AtomicBool = AtomicBool::new(false);

/// Signal used to knock vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Running vCPU threads and their shared control.
#[derive(Debug)]
pub struct VcpuHandles {
    threads: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
}

impl VcpuHandles {
    /// Starts one thread per vCPU. `on_start` runs first on each thread (seccomp install).
    pub fn start(
        vcpus: Vec<Vcpu>,
        ctx: VcpuContext,
        on_start: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, VcpuError> {
        if !KICK_HANDLER_SET.swap(true, Ordering::SeqCst) {
            register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)?;
        }
        let control = Arc::clone(&ctx.control);
        let mut threads = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let ctx = ctx.clone();
            let on_start = Arc::clone(&on_start);
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    on_start();
                    vcpu.run_loop(ctx)
                })
                .map_err(VcpuError::Spawn)?;
            threads.push(handle);
        }
        Ok(VcpuHandles { threads, control })
    }

    fn kick_all(&self) {
        for t in &self.threads {
            if !t.is_finished() {
                // A thread that already left KVM_RUN ignores the signal.
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Pauses every vCPU; returns once all are parked (or after 1 s).
    pub fn pause(&self) -> bool {
        self.control.set(RunState::Paused);
        let live = self.threads.iter().filter(|t| !t.is_finished()).count();
        for _ in 0..100 {
            if self.control.paused_count() >= live {
                return true;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) {
        self.control.set(RunState::Running);
    }

    /// Whether the vCPUs are running (not paused).
    pub fn is_running(&self) -> bool {
        self.control.is_running()
    }

    /// Stops and joins every vCPU thread.
    pub fn stop(self) {
        self.control.set(RunState::Stopping);
        // Kick until every thread has left KVM_RUN (a kick landing just before KVM_RUN is
        // lost, hence the repeats); give up after about a second.
        for _ in 0..5000 {
            if self.threads.iter().all(|t| t.is_finished()) {
                break;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_micros(200));
        }
        for t in self.threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
