//! 8250 UART (COM1 on x86_64) over vm-superio, with its output sent to stdout, a file or a
//! Unix socket client, and a watch for the guest kernel's panic message.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::device_manager::bus::BusDevice;
use crate::devices::IrqTrigger;
use crate::metrics::DeviceMetrics;

/// Output kept for a socket client that has not connected yet.
const SOCKET_BACKLOG_MAX: usize = 64 * 1024;
/// What the guest kernel prints when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// A Unix socket console: one client at a time; output before the first client is kept.
#[derive(Debug, Default)]
pub struct SocketConsole {
    client: Option<UnixStream>,
    backlog: Vec<u8>,
}

impl SocketConsole {
    /// Attaches a client, sending it the backlog first.
    pub fn attach(&mut self, mut client: UnixStream) {
        if !self.backlog.is_empty() && client.write_all(&self.backlog).is_ok() {
            self.backlog.clear();
        }
        // Writes must not block the vCPU thread on a slow reader.
        let _ = client.set_nonblocking(true);
        self.client = Some(client);
    }

    /// Drops the current client.
    pub fn detach(&mut self) {
        self.client = None;
    }

    fn write(&mut self, buf: &[u8]) {
        if let Some(c) = self.client.as_mut() {
            match c.write(buf) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.client = None,
            }
        }
        let room = SOCKET_BACKLOG_MAX.saturating_sub(self.backlog.len());
        self.backlog.extend_from_slice(&buf[..buf.len().min(room)]);
    }
}

/// Where serial output goes.
#[derive(Debug)]
pub enum SerialSink {
    /// The monitor's stdout.
    Stdout,
    /// A file (appended).
    File(File),
    /// A Unix socket client.
    Socket(Arc<Mutex<SocketConsole>>),
    /// Discarded.
    Null,
}

/// The UART's writer: forwards to the sink and watches for a kernel panic.
#[derive(Debug)]
pub struct SerialOut {
    sink: SerialSink,
    matched: usize,
    panicked: Arc<AtomicBool>,
    metrics: Arc<DeviceMetrics>,
}

impl SerialOut {
    /// A writer into `sink`, setting `panicked` when the guest prints its panic message.
    pub fn new(sink: SerialSink, panicked: Arc<AtomicBool>, metrics: Arc<DeviceMetrics>) -> Self {
        SerialOut {
            sink,
            matched: 0,
            panicked,
            metrics,
        }
    }

    fn watch(&mut self, buf: &[u8]) {
        for b in buf {
            if *b == PANIC_MARKER[self.matched] {
                self.matched += 1;
                if self.matched == PANIC_MARKER.len() {
                    self.panicked.store(true, Ordering::SeqCst);
                    self.matched = 0;
                }
            } else {
                self.matched = usize::from(*b == PANIC_MARKER[0]);
            }
        }
    }
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.watch(buf);
        self.metrics.bytes_from_guest.add(buf.len() as u64);
        match &mut self.sink {
            SerialSink::Stdout => {
                let mut out = io::stdout().lock();
                // Console output must never stop the guest: errors are dropped.
                let _ = out.write_all(buf);
            }
            SerialSink::File(f) => {
                let _ = f.write_all(buf);
            }
            SerialSink::Socket(s) => s.lock().unwrap_or_else(|e| e.into_inner()).write(buf),
            SerialSink::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let SerialSink::Stdout = self.sink {
            let _ = io::stdout().flush();
        }
        Ok(())
    }
}

/// The UART on a bus.
#[derive(Debug)]
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, SerialOut>,
}

impl SerialDevice {
    /// A UART raising `irq`, writing to `out`.
    pub fn new(irq: IrqTrigger, out: SerialOut) -> Self {
        SerialDevice {
            serial: Serial::new(irq, out),
        }
    }

    /// Feeds host input to the guest; returns how many bytes the FIFO took.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.serial.fifo_capacity();
        let take = input.len().min(room);
        if take == 0 {
            return 0;
        }
        match self.serial.enqueue_raw_bytes(&input[..take]) {
            Ok(n) => {
                self.serial.writer().metrics.bytes_to_guest.add(n as u64);
                n
            }
            Err(_) => 0,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // Write errors come from the sink or the irqfd; the guest cannot act on them.
            let _ = self.serial.write(off, *b);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::io::Read;

    fn out(sink: SerialSink) -> (SerialOut, Arc<AtomicBool>) {
        let p = Arc::new(AtomicBool::new(false));
        (
            SerialOut::new(sink, Arc::clone(&p), Arc::new(DeviceMetrics::default())),
            p,
        )
    }

    #[test]
    fn panic_marker_across_writes() {
        let (mut o, p) = out(SerialSink::Null);
        o.write_all(b"xxKernel pan").unwrap();
        assert!(!p.load(Ordering::SeqCst));
        o.write_all(b"ic - not syncing: VFS").unwrap();
        assert!(p.load(Ordering::SeqCst));
    }

    #[test]
    fn uart_writes_reach_file() {
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let f = tmp.as_file().try_clone().unwrap();
        let (o, _) = out(SerialSink::File(f));
        let mut dev = SerialDevice::new(IrqTrigger::new().unwrap(), o);
        for b in b"hello" {
            dev.write(0, &[*b]);
        }
        let mut s = String::new();
        let mut r = File::open(tmp.as_path()).unwrap();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn socket_backlog_then_client() {
        let console = Arc::new(Mutex::new(SocketConsole::default()));
        let (mut o, _) = out(SerialSink::Socket(Arc::clone(&console)));
        o.write_all(b"early").unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        console.lock().unwrap().attach(a);
        o.write_all(b" late").unwrap();
        let mut buf = [0u8; 10];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"early late");
    }
}
