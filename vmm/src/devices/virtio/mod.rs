//! Virtio devices and their MMIO transport.
//!
//! Every device has the same shape: `device.rs` holds the [`VirtioDevice`] implementation
//! (features, config space, activation, event wiring); the queue processing lives in its own
//! file as pure functions over a `GuestMemory` and a `virtio_queue::Queue`, without eventfds or
//! KVM, so unit tests and fuzz targets drive it directly.

pub mod block;
pub mod mmio;
pub mod net;
pub mod vhost_user_fs;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

/// VIRTIO_F_VERSION_1: modern device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_INDIRECT_DESC: descriptor chains may live in indirect tables (handled by
/// virtio-queue's chain walker, so the queue processing is unchanged).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 0x2;

/// Device type ids.
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Socket device.
    pub const VSOCK: u32 = 19;
    /// File system device.
    pub const FS: u32 = 26;
}

/// The interrupt line of one virtio-mmio device and its status register.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
    metrics: Arc<DeviceMetrics>,
}

impl VirtioInterrupt {
    /// An interrupt signalled through `irq` (an irqfd).
    pub fn new(irq: EventFd, metrics: Arc<DeviceMetrics>) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            irq,
            metrics,
        }
    }

    /// Signals that used rings changed.
    pub fn signal_used_queue(&self) {
        self.signal(INT_VRING);
    }

    /// Signals a configuration change.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.metrics.interrupts.inc();
        // The eventfd counter saturating still leaves the line raised.
        let _ = self.irq.write(1);
    }

    /// Current interrupt status.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irq eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

/// Errors while activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues.
    #[error("Expected {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues given.
        got: usize,
    },
    /// The vhost-user backend refused the setup.
    #[error("vhost-user backend setup failed: {0}")]
    VhostUser(String),
    /// An I/O error in the backend.
    #[error("Device backend setup failed")]
    Backend(#[source] std::io::Error),
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Configured queues, in order.
    pub queues: Vec<Queue>,
    /// The notification eventfd of each queue (ioeventfds).
    pub queue_evts: Vec<EventFd>,
    /// The device interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// A virtio device model behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Virtio device type.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Features the driver accepted (a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Processes queue `index` after a guest notification.
    fn process_queue(&mut self, index: usize);
    /// A descriptor the event loop polls for backend work (tap, sockets, vhost-user calls).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// Handles backend readiness on [`Self::backend_fd`].
    fn process_backend(&mut self) {}
    /// Whether the event loop should poll the queue eventfds. A vhost-user device hands
    /// them to its backend, which must be their only reader.
    fn polls_queue_events(&self) -> bool {
        true
    }
    /// Device reset by the driver; returns false if the device cannot be reset.
    fn reset(&mut self) -> bool {
        false
    }
}

/// Copies `src` (a config space) into `data` at `offset`, bounds-checked; zero-fills the rest.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - off);
    data[..n].copy_from_slice(&src[off..off + n]);
}
