//! The device thread: virtio queue notifications and device backends.
//!
//! One thread polls every virtio queue's ioeventfd (except those a vhost-user backend reads)
//! and every device backend fd (tap, vsock sockets, vhost-user call fds), and runs the
//! device's queue or backend processing under the transport's mutex. It runs under its own
//! seccomp filter ([`ThreadKind::Device`]), apart from the main thread (exit, console, API)
//! and the vCPU threads (KVM_RUN, register accesses).

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::mmio::MmioTransport;
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{ExitReason, VmExitNotifier};

const TOKEN_STOP: u64 = 0;
const TOKEN_QUEUE_BASE: u64 = 0x1_0000;
const TOKEN_BACKEND_BASE: u64 = 0x2_0000;

/// Errors while starting the device thread.
#[derive(Debug, thiserror::Error)]
pub enum DeviceThreadError {
    /// The epoll set or the stop eventfd cannot be made.
    #[error("Cannot set up the device event loop")]
    Setup(#[source] std::io::Error),
    /// The thread cannot be spawned.
    #[error("Cannot start the device thread")]
    Spawn(#[source] std::io::Error),
    /// The device thread's seccomp filter cannot be installed.
    #[error("Cannot install the device thread's seccomp filter: {0}")]
    Seccomp(String),
}

/// The running device thread.
#[derive(Debug)]
pub struct DeviceThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
    tid: libc::pid_t,
}

impl DeviceThread {
    /// Starts the thread over `devices` (index = device number). Returns once the thread runs,
    /// with its seccomp filter installed when `use_seccomp` is set. A failure in the loop
    /// later is reported through `exit`.
    pub fn start(
        devices: Vec<Arc<Mutex<MmioTransport>>>,
        use_seccomp: bool,
        exit: Arc<VmExitNotifier>,
    ) -> Result<Self, DeviceThreadError> {
        let epoll = Epoll::new().map_err(DeviceThreadError::Setup)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceThreadError::Setup)?;
        let add = |fd: i32, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(DeviceThreadError::Setup)
        };
        add(stop.as_raw_fd(), TOKEN_STOP)?;
        for (d, dev) in devices.iter().enumerate() {
            let t = dev.lock().unwrap_or_else(|e| e.into_inner());
            if t.device().polls_queue_events() {
                for (q, evt) in t.queue_evts().iter().enumerate() {
                    add(
                        evt.as_raw_fd(),
                        TOKEN_QUEUE_BASE + ((d as u64) << 8) + q as u64,
                    )?;
                }
            }
            if let Some(fd) = t.device().backend_fd() {
                add(fd, TOKEN_BACKEND_BASE + d as u64)?;
            }
        }
        let stop_evt = stop.try_clone().map_err(DeviceThreadError::Setup)?;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<libc::pid_t, String>>();
        let handle = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                // SAFETY: gettid takes no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                if use_seccomp {
                    if let Err(e) = seccomp::install(ThreadKind::Device) {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(tid));
                drop(ready_tx);
                if let Err(e) = run_loop(&epoll, &devices) {
                    exit.notify(ExitReason::VmmError(format!(
                        "device thread: epoll_wait failed: {e}"
                    )));
                }
                drop(stop_evt);
            })
            .map_err(DeviceThreadError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(tid)) => Ok(DeviceThread {
                stop,
                handle: Some(handle),
                tid,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(DeviceThreadError::Seccomp(e))
            }
            Err(_) => {
                let _ = handle.join();
                Err(DeviceThreadError::Spawn(std::io::Error::other(
                    "the device thread ended during start",
                )))
            }
        }
    }

    /// The thread's kernel thread id.
    pub fn tid(&self) -> libc::pid_t {
        self.tid
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = handle.join();
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Serves events until the stop eventfd fires.
fn run_loop(epoll: &Epoll, devices: &[Arc<Mutex<MmioTransport>>]) -> std::io::Result<()> {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return Ok(()),
                t if t >= TOKEN_BACKEND_BASE => {
                    let dev = usize::try_from(t - TOKEN_BACKEND_BASE)
                        .ok()
                        .and_then(|i| devices.get(i));
                    if let Some(dev) = dev {
                        let mut tr = dev.lock().unwrap_or_else(|e| e.into_inner());
                        tr.device_mut().process_backend();
                    }
                }
                t if t >= TOKEN_QUEUE_BASE => {
                    let d = usize::try_from((t - TOKEN_QUEUE_BASE) >> 8).unwrap_or(usize::MAX);
                    let q = usize::try_from((t - TOKEN_QUEUE_BASE) & 0xff).unwrap_or(usize::MAX);
                    if let Some(dev) = devices.get(d) {
                        let mut tr = dev.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(evt) = tr.queue_evts().get(q) {
                            let _ = evt.read();
                        }
                        tr.notify_queue(q);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
    use crate::metrics::DeviceMetrics;
    use std::os::fd::RawFd;
    use vm_memory::GuestAddress;

    /// A device whose backend work is one raw syscall, `syscall`, with no arguments that
    /// matter; it reports the result through `done`.
    struct SyscallDevice {
        backend: EventFd,
        syscall: libc::c_long,
        done: Arc<Mutex<mpsc::Sender<i64>>>,
    }

    impl VirtioDevice for SyscallDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn activate(&mut self, _ctx: ActivateContext) -> Result<(), ActivateError> {
            Ok(())
        }
        fn process_queue(&mut self, _index: usize) {}
        fn backend_fd(&self) -> Option<RawFd> {
            Some(self.backend.as_raw_fd())
        }
        fn process_backend(&mut self) {
            let _ = self.backend.read();
            // SAFETY: a raw syscall with null/zero arguments; the ones used here either fail
            // with an error code or are refused by the seccomp filter.
            let ret = unsafe { libc::syscall(self.syscall, 0, 0, 0, 0) };
            let _ = self
                .done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(ret);
        }
    }

    fn transport(
        syscall: libc::c_long,
    ) -> (Arc<Mutex<MmioTransport>>, EventFd, mpsc::Receiver<i64>) {
        let mem =
            crate::vstate::memory::create_guest_memory(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let backend = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = backend.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let dev = SyscallDevice {
            backend,
            syscall,
            done: Arc::new(Mutex::new(tx)),
        };
        let metrics = Arc::new(DeviceMetrics::default());
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Arc::clone(&metrics),
        ));
        let t = MmioTransport::new(Box::new(dev), mem, irq, metrics).unwrap();
        (Arc::new(Mutex::new(t)), kick, rx)
    }

    fn seccomp_mode(tid: libc::pid_t) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn backend_work_runs_on_the_device_thread() {
        let (dev, kick, done) = transport(libc::SYS_gettid);
        let exit = Arc::new(VmExitNotifier::new().unwrap());
        let thread = DeviceThread::start(vec![dev], false, exit).unwrap();
        kick.write(1).unwrap();
        let tid = done
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(tid, i64::from(thread.tid()));
        // SAFETY: gettid takes no arguments.
        assert_ne!(tid, i64::from(unsafe { libc::gettid() }));
        assert_eq!(
            seccomp_mode(thread.tid()),
            Some(0),
            "no filter without seccomp"
        );
        thread.stop();
    }

    /// In a forked child (the filter kills the whole process): the device thread runs under
    /// a seccomp filter (Seccomp: 2 in its status, none on the thread that started it), an
    /// allowed syscall in device work goes through, and a syscall the device filter does not
    /// allow (eventfd2, which the main thread may make) kills the process with SIGSYS.
    #[test]
    fn device_thread_has_its_own_filter() {
        use std::io::Write;
        // SAFETY: the child runs this test's code only and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                let (allowed, kick_allowed, done_allowed) = transport(libc::SYS_getpid);
                let (forbidden, kick_forbidden, _done) = transport(libc::SYS_eventfd2);
                let exit = Arc::new(VmExitNotifier::new().ok()?);
                let thread = match DeviceThread::start(vec![allowed, forbidden], true, exit) {
                    Ok(t) => t,
                    Err(DeviceThreadError::Seccomp(_)) => return Some(3),
                    Err(_) => return Some(4),
                };
                // SAFETY: gettid takes no arguments.
                let me = unsafe { libc::gettid() };
                if seccomp_mode(thread.tid()) != Some(2) || seccomp_mode(me) != Some(0) {
                    return Some(5);
                }
                kick_allowed.write(1).ok()?;
                done_allowed
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .ok()?;
                kick_forbidden.write(1).ok()?;
                std::thread::sleep(std::time::Duration::from_secs(5));
                Some(0)
            })()
            .unwrap_or(6);
            // SAFETY: ending the child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3 {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: device_thread_has_its_own_filter: seccomp is not available"
            );
            return;
        }
        assert!(
            libc::WIFSIGNALED(status),
            "the child was not killed: status {status:#x}"
        );
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
