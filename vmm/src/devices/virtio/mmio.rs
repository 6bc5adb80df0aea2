//! The virtio-mmio transport (version 2, "modern") in front of a [`VirtioDevice`].

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::device_manager::bus::BusDevice;
use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("RUNV" is not a PCI vendor; any value is allowed).
pub const VENDOR_ID: u32 = 0x5655_4e52;

/// Register offsets.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    #![allow(missing_docs)]
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    config_generation: u32,
    metrics: Arc<DeviceMetrics>,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

/// Errors while creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// An eventfd cannot be created.
    #[error("Cannot create a queue eventfd")]
    EventFd(#[source] std::io::Error),
    /// A queue size is not valid.
    #[error("Invalid queue size {0}")]
    QueueSize(u16),
}

impl MmioTransport {
    /// Wraps `device`, creating its queues and queue eventfds.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        metrics: Arc<DeviceMetrics>,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for size in device.queue_max_sizes() {
            queues.push(Queue::new(*size).map_err(|_| MmioError::QueueSize(*size))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            config_generation: 0,
            metrics,
        })
    }

    /// The queue notification eventfds, to register as ioeventfds and poll.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The wrapped device, mutable.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Called by the event loop when queue `index` was notified.
    pub fn notify_queue(&mut self, index: usize) {
        if self.activated {
            self.metrics.notifications.inc();
            self.device.process_queue(index);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let idx = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(idx)
    }

    fn device_features_word(&self) -> u32 {
        let features = self.device.features() | VIRTIO_F_VERSION_1;
        match self.device_features_select {
            0 => lo32(features),
            1 => lo32(features >> 32),
            _ => 0,
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            // The device cannot restart: tell the driver it needs a reset it cannot get.
            self.status = status::DEVICE_NEEDS_RESET;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.queue_select = 0;
        self.driver_features = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver may only add bits, in order.
        if value & old != old {
            return;
        }
        if value & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            self.device.ack_features(self.driver_features);
        }
        self.status = value;
        let ready_bits =
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        if !self.activated && value & ready_bits == ready_bits && value & status::FAILED == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        // VIRTIO_RING_F_EVENT_IDX negotiated: the queues use avail_event/used_event.
        let event_idx =
            self.driver_features & self.device.features() & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .filter_map(copy_queue)
            .map(|mut q| {
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        let all_valid = queues.len() == self.queues.len()
            && queues.iter().all(|q| q.ready() && q.is_valid(&self.mem));
        let evts: Result<Vec<EventFd>, _> = self.queue_evts.iter().map(|e| e.try_clone()).collect();
        let ok = match (all_valid, evts) {
            (true, Ok(queue_evts)) => self
                .device
                .activate(ActivateContext {
                    mem: self.mem.clone(),
                    queues,
                    queue_evts,
                    interrupt: Arc::clone(&self.interrupt),
                })
                .map_err(|e| crate::log_line!("virtio device activation failed: {e}"))
                .is_ok(),
            _ => false,
        };
        if ok {
            self.activated = true;
        } else {
            self.metrics.errors.inc();
            self.status |= status::DEVICE_NEEDS_RESET;
            self.interrupt.signal_config();
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => self.device_features_word(),
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        // Queue and feature registers are writable only before DRIVER_OK.
        let configurable = !self.activated && self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES if configurable => {
                let offered = self.device.features() | VIRTIO_F_VERSION_1;
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let value = (u64::from(value) << shift) & offered;
                self.driver_features = (self.driver_features & !mask) | value;
            }
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM if configurable => {
                if let (Some(q), Ok(n)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(n);
                }
            }
            reg::QUEUE_READY if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(value), None);
                }
            }
            reg::QUEUE_DESC_HIGH if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(value));
                }
            }
            reg::QUEUE_AVAIL_LOW if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(value), None);
                }
            }
            reg::QUEUE_AVAIL_HIGH if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(value));
                }
            }
            reg::QUEUE_USED_LOW if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(value), None);
                }
            }
            reg::QUEUE_USED_HIGH if configurable => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(value));
                }
            }
            reg::QUEUE_NOTIFY => {
                // Normally KVM consumes this write through the ioeventfd; without one (tests,
                // or a registration failure) the same eventfd is signalled here.
                if let Some(evt) = usize::try_from(value)
                    .ok()
                    .and_then(|i| self.queue_evts.get(i))
                {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            _ => {}
        }
    }
}

/// The low 32 bits of `v`.
fn lo32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// A fresh queue with the configuration the driver wrote into `q`.
fn copy_queue(q: &Queue) -> Option<Queue> {
    let split = |addr: u64| (Some(lo32(addr)), Some(lo32(addr >> 32)));
    let mut n = Queue::new(q.max_size()).ok()?;
    n.set_size(q.size());
    let (lo, hi) = split(q.desc_table());
    n.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    n.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    n.set_used_ring_address(lo, hi);
    n.set_ready(q.ready());
    Some(n)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        self.write_reg(offset, u32::from_le_bytes(b));
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::devices::virtio::{read_config_bytes, ActivateError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    struct Dummy {
        activated: Arc<AtomicUsize>,
        processed: Arc<AtomicUsize>,
        acked: u64,
        offer: u64,
        /// Queues handed over with event_idx on, at the last activation.
        event_idx_queues: Arc<AtomicUsize>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            self.offer
        }
        fn ack_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            assert_eq!(ctx.queues.len(), 2);
            let with_event_idx = ctx.queues.iter().filter(|q| q.event_idx_enabled()).count();
            self.event_idx_queues
                .store(with_event_idx, Ordering::SeqCst);
            self.activated.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn process_queue(&mut self, _index: usize) {
            self.processed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (MmioTransport, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (t, activated, processed, _) = transport_offering(0x5);
        (t, activated, processed)
    }

    fn transport_offering(
        offer: u64,
    ) -> (
        MmioTransport,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
    ) {
        let mem =
            crate::vstate::memory::create_guest_memory(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let activated = Arc::new(AtomicUsize::new(0));
        let processed = Arc::new(AtomicUsize::new(0));
        let event_idx_queues = Arc::new(AtomicUsize::new(0));
        let dev = Dummy {
            activated: Arc::clone(&activated),
            processed: Arc::clone(&processed),
            acked: 0,
            offer,
            event_idx_queues: Arc::clone(&event_idx_queues),
        };
        let metrics = Arc::new(DeviceMetrics::default());
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Arc::clone(&metrics),
        ));
        (
            MmioTransport::new(Box::new(dev), mem, irq, metrics).unwrap(),
            activated,
            processed,
            event_idx_queues,
        )
    }

    /// Initialises the device accepting `driver_features` (low word) and two queues.
    fn init_with(t: &mut MmioTransport, driver_features: u32) {
        wr(t, reg::STATUS, status::ACKNOWLEDGE);
        wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, 1);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, driver_features);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(t, reg::STATUS, s);
        setup_queue(t, 0, 0x1000);
        setup_queue(t, 1, 0x2000);
        wr(t, reg::STATUS, s | status::DRIVER_OK);
        assert!(t.is_activated());
    }

    #[test]
    fn event_idx_reaches_the_queues_only_when_negotiated() {
        let event_idx = u32::try_from(crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX).unwrap();
        // Offered and accepted.
        let (mut t, _, _, seen) = transport_offering(0x5 | u64::from(event_idx));
        init_with(&mut t, 0x5 | event_idx);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        // Offered, not accepted.
        let (mut t, _, _, seen) = transport_offering(0x5 | u64::from(event_idx));
        init_with(&mut t, 0x5);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        // Accepted without the offer: ignored.
        let (mut t, _, _, seen) = transport_offering(0x5);
        init_with(&mut t, 0x5 | event_idx);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(rd(&mut t, reg::MAGIC), MMIO_MAGIC_VALUE);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 42);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 5);
        let mut cfg = [0u8; 2];
        t.read(reg::CONFIG + 2, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        let mut cfg = [0u8; 4];
        t.read(reg::CONFIG + 3, &mut cfg);
        assert_eq!(cfg, [4, 0, 0, 0]);
        // Unaligned and odd-sized register accesses read as zero.
        let mut odd = [0xffu8; 2];
        t.read(reg::MAGIC, &mut odd);
        assert_eq!(odd, [0, 0]);
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, base: u32) {
        wr(t, reg::QUEUE_SEL, sel);
        assert_eq!(rd(t, reg::QUEUE_NUM_MAX), 16);
        wr(t, reg::QUEUE_NUM, 16);
        wr(t, reg::QUEUE_DESC_LOW, base);
        wr(t, reg::QUEUE_AVAIL_LOW, base + 0x100);
        wr(t, reg::QUEUE_USED_LOW, base + 0x200);
        wr(t, reg::QUEUE_READY, 1);
    }

    #[test]
    fn driver_init_activates_and_notify_signals_eventfd() {
        let (mut t, activated, processed) = transport();
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::DRIVER_FEATURES, 1);
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        wr(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, reg::STATUS, s);
        setup_queue(&mut t, 0, 0x1000);
        setup_queue(&mut t, 1, 0x2000);
        wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
        assert!(t.is_activated());
        assert_eq!(activated.load(Ordering::SeqCst), 1);
        // Features beyond the offer are dropped.
        wr(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
        t.notify_queue(1);
        assert_eq!(processed.load(Ordering::SeqCst), 1);
        // Queue registers are frozen after DRIVER_OK.
        wr(&mut t, reg::QUEUE_SEL, 0);
        wr(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        // Out-of-range notify and queue select are harmless.
        wr(&mut t, reg::QUEUE_NOTIFY, 99);
        wr(&mut t, reg::QUEUE_SEL, 99);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn invalid_queue_fails_activation() {
        let (mut t, activated, _) = transport();
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::STATUS, s);
        setup_queue(&mut t, 0, 0x1000);
        // Queue 1 points outside guest memory.
        setup_queue(&mut t, 1, 0xfff0_0000);
        wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
        assert!(!t.is_activated());
        assert_eq!(activated.load(Ordering::SeqCst), 0);
        assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }
}
