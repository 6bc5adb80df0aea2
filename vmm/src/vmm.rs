//! A built VM and its main event loop.
//!
//! The main thread polls the exit notifier, console input and the API socket. The device
//! thread (`device_loop`) polls the virtio queues' ioeventfds and the device backends. vCPU
//! threads run the guest and handle register accesses themselves.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::{ApiRequest, ApiServer};
use crate::device_loop::DeviceThread;
use crate::device_manager::bus::Bus;
use crate::device_manager::MmioDeviceInfo;
use crate::devices::boot_timer::BootMark;
use crate::devices::serial::{SerialDevice, SocketConsole};
use crate::metrics::VmmMetrics;
use crate::seccomp::{self, ThreadKind};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::{
    ExitReason, Vcpu, VcpuContext, VcpuControl, VcpuHandles, VmExitNotifier,
};
use crate::vstate::vm::Vm;

static START: OnceLock<Instant> = OnceLock::new();

/// Records the monitor's start time (call first thing in `main`); returns it.
pub fn start_instant() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Errors while starting the VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The event loop cannot be set up.
    #[error("Cannot set up the event loop")]
    Epoll(#[source] std::io::Error),
    /// vCPU threads cannot start.
    #[error("Cannot start vCPUs")]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// The main thread's seccomp filter cannot be installed.
    #[error("Cannot install the main thread's seccomp filter")]
    Seccomp(#[from] seccomp::SeccompError),
    /// The device thread cannot start.
    #[error("Cannot start the device thread")]
    Devices(#[from] crate::device_loop::DeviceThreadError),
}

/// Where console input comes from.
#[derive(Debug)]
pub enum ConsoleInput {
    /// Nothing.
    None,
    /// The monitor's stdin.
    Stdin,
    /// Clients of a Unix socket.
    Socket(UnixListener, Arc<Mutex<SocketConsole>>),
}

/// A VM ready to run.
pub struct Vmm {
    pub(crate) vm: Vm,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) virtio: Vec<MmioDeviceInfo>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    #[cfg(target_arch = "x86_64")]
    pub(crate) i8042: Arc<Mutex<crate::devices::i8042::I8042>>,
    pub(crate) console: ConsoleInput,
    pub(crate) api: Option<ApiServer>,
    pub(crate) exit: Arc<VmExitNotifier>,
    pub(crate) metrics: Arc<VmmMetrics>,
    pub(crate) panicked: Arc<AtomicBool>,
    pub(crate) boot_marks: Arc<Mutex<Vec<BootMark>>>,
    pub(crate) seccomp: bool,
    pub(crate) cmdline: String,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .field("cmdline", &self.cmdline)
            .finish()
    }
}

const TOKEN_EXIT: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_CONSOLE_LISTENER: u64 = 3;
const TOKEN_CONSOLE_CLIENT: u64 = 4;
const TOKEN_API: u64 = 5;

/// Event loop bookkeeping.
struct Loop {
    epoll: Epoll,
    shutdown_deadline: Option<Instant>,
    console_client: Option<std::os::unix::net::UnixStream>,
}

impl Vmm {
    /// The final kernel command line.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Guest memory.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Counters.
    pub fn metrics(&self) -> Arc<VmmMetrics> {
        Arc::clone(&self.metrics)
    }

    fn add(epoll: &Epoll, fd: RawFd, token: u64) -> Result<(), RunError> {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(RunError::Epoll)
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> Result<ExitReason, RunError> {
        let epoll = Epoll::new().map_err(RunError::Epoll)?;
        Self::add(&epoll, self.exit.event().as_raw_fd(), TOKEN_EXIT)?;
        match &self.console {
            ConsoleInput::Stdin => {
                // stdin may be closed or a file; input is optional.
                let _ = Self::add(&epoll, libc::STDIN_FILENO, TOKEN_STDIN);
            }
            ConsoleInput::Socket(l, _) => {
                Self::add(&epoll, l.as_raw_fd(), TOKEN_CONSOLE_LISTENER)?;
            }
            ConsoleInput::None => {}
        }
        if let Some(api) = &self.api {
            Self::add(&epoll, api.epoll_fd(), TOKEN_API)?;
        }

        let ctx = VcpuContext {
            pio: Arc::clone(&self.pio),
            mmio: Arc::clone(&self.mmio),
            exit: Arc::clone(&self.exit),
            control: Arc::new(VcpuControl::default()),
            metrics: Arc::clone(&self.metrics),
        };
        let use_seccomp = self.seccomp;
        let exit_for_vcpu = Arc::clone(&self.exit);
        let on_start: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if use_seccomp {
                if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
                    exit_for_vcpu.notify(ExitReason::VmmError(format!("vCPU seccomp: {e}")));
                }
            }
        });
        // The device thread runs before the vCPUs, so the first queue notification is served.
        let devices = DeviceThread::start(
            self.virtio
                .iter()
                .map(|d| Arc::clone(&d.transport))
                .collect(),
            self.seccomp,
            Arc::clone(&self.exit),
        )?;
        let vcpus = std::mem::take(&mut self.vcpus);
        let handles = match VcpuHandles::start(vcpus, ctx, on_start) {
            Ok(h) => h,
            Err(e) => {
                devices.stop();
                return Err(e.into());
            }
        };
        if self.seccomp {
            if let Err(e) = seccomp::install(ThreadKind::Main) {
                handles.stop();
                devices.stop();
                return Err(e.into());
            }
        }

        let mut lp = Loop {
            epoll,
            shutdown_deadline: None,
            console_client: None,
        };
        let reason = self.event_loop(&mut lp, &handles);
        handles.stop();
        devices.stop();
        Ok(reason)
    }

    fn event_loop(&mut self, lp: &mut Loop, vcpus: &VcpuHandles) -> ExitReason {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            if let Some(reason) = self.exit.reason() {
                return self.classify(reason);
            }
            let timeout = match lp.shutdown_deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return ExitReason::Forced;
                    }
                    i32::try_from((d - now).as_millis())
                        .unwrap_or(i32::MAX)
                        .max(1)
                }
                None => -1,
            };
            let n = match lp.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return ExitReason::VmmError(format!("epoll_wait failed: {e}")),
            };
            for ev in &events[..n] {
                self.dispatch(lp, vcpus, ev.data(), ev.event_set());
            }
        }
    }

    /// A guest "shutdown" that follows a kernel panic is a crash.
    fn classify(&self, reason: ExitReason) -> ExitReason {
        match reason {
            ExitReason::GuestShutdown(why) if self.panicked.load(Ordering::SeqCst) => {
                ExitReason::GuestCrash(format!("guest kernel panic ({why})"))
            }
            other => other,
        }
    }

    fn dispatch(&mut self, lp: &mut Loop, vcpus: &VcpuHandles, token: u64, events: EventSet) {
        match token {
            TOKEN_EXIT => {
                let _ = self.exit.event().read();
            }
            TOKEN_STDIN => {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a stack buffer of the given length from fd 0.
                let n =
                    unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 || events.contains(EventSet::HANG_UP) {
                    let _ = lp.epoll.ctl(
                        ControlOperation::Delete,
                        libc::STDIN_FILENO,
                        EpollEvent::default(),
                    );
                } else {
                    let n = usize::try_from(n).unwrap_or(0);
                    self.serial_input(&buf[..n]);
                }
            }
            TOKEN_CONSOLE_LISTENER => self.accept_console(lp),
            TOKEN_CONSOLE_CLIENT => self.console_client_input(lp),
            TOKEN_API => self.serve_api(lp, vcpus),
            _ => {}
        }
    }

    fn serial_input(&self, mut bytes: &[u8]) {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        // The UART FIFO is small; what does not fit is dropped, as on a real line.
        while !bytes.is_empty() {
            let n = serial.enqueue_input(bytes);
            if n == 0 {
                break;
            }
            bytes = &bytes[n..];
        }
    }

    fn accept_console(&mut self, lp: &mut Loop) {
        let ConsoleInput::Socket(listener, console) = &self.console else {
            return;
        };
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        if let Some(old) = lp.console_client.take() {
            let _ = lp.epoll.ctl(
                ControlOperation::Delete,
                old.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        if let Ok(reader) = stream.try_clone() {
            let _ = reader.set_nonblocking(true);
            if Self::add(&lp.epoll, reader.as_raw_fd(), TOKEN_CONSOLE_CLIENT).is_ok() {
                lp.console_client = Some(reader);
            }
        }
        console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attach(stream);
    }

    fn console_client_input(&mut self, lp: &mut Loop) {
        let Some(client) = lp.console_client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 256];
        match client.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = lp.epoll.ctl(
                    ControlOperation::Delete,
                    client.as_raw_fd(),
                    EpollEvent::default(),
                );
                lp.console_client = None;
                if let ConsoleInput::Socket(_, console) = &self.console {
                    console.lock().unwrap_or_else(|e| e.into_inner()).detach();
                }
            }
            Ok(n) => self.serial_input(&buf[..n]),
        }
    }

    fn serve_api(&mut self, lp: &mut Loop, vcpus: &VcpuHandles) {
        let Some(mut api) = self.api.take() else {
            return;
        };
        let mut handle = |req: ApiRequest| -> Value {
            match req {
                ApiRequest::Pause {} => {
                    if vcpus.pause() {
                        json!({"ok": true})
                    } else {
                        json!({"ok": false, "error": "vCPUs did not pause within 1 s"})
                    }
                }
                ApiRequest::Resume {} => {
                    vcpus.resume();
                    json!({"ok": true})
                }
                ApiRequest::Shutdown { timeout_ms } => {
                    let ms = timeout_ms.unwrap_or(crate::api::request::DEFAULT_SHUTDOWN_TIMEOUT_MS);
                    lp.shutdown_deadline = Some(Instant::now() + Duration::from_millis(ms));
                    vcpus.resume();
                    self.request_guest_shutdown();
                    json!({"ok": true})
                }
                ApiRequest::Metrics {} => json!({"ok": true, "metrics": self.metrics.to_json()}),
                ApiRequest::Status {} => {
                    let marks: Vec<Value> = self
                        .boot_marks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .map(|m| json!({"value": m.value, "us": u64::try_from(m.since_start.as_micros()).unwrap_or(u64::MAX)}))
                        .collect();
                    let state = if vcpus.is_running() {
                        "running"
                    } else {
                        "paused"
                    };
                    json!({"ok": true, "state": state, "boot_marks": marks})
                }
            }
        };
        api.process(&mut handle);
        self.api = Some(api);
    }

    /// Asks the guest to shut down: Ctrl-Alt-Del through the i8042 on x86_64. On aarch64
    /// there is no such signal without ACPI; the deadline then stops the VM.
    fn request_guest_shutdown(&self) {
        #[cfg(target_arch = "x86_64")]
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del();
    }
}
