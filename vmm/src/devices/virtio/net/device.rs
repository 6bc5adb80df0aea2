//! The virtio-net device: queue 0 RX, queue 1 TX, a MAC in config space.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::queue::{deliver_rx, process_tx, RxOutcome, MAX_FRAME_LEN};
use super::tap::Tap;
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const QUEUE_SIZES: &[u16] = &[256, 256];
const RX: usize = 0;
const TX: usize = 1;

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// virtio-net over a tap.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    epoll: Epoll,
    active: Option<Active>,
    rx_frame: Vec<u8>,
    rx_len: usize,
    rx_pending: bool,
    tx_buf: Vec<u8>,
    metrics: Arc<DeviceMetrics>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.name())
            .finish()
    }
}

impl Net {
    /// A NIC on `tap` with address `mac`.
    pub fn new(tap: Tap, mac: [u8; 6], metrics: Arc<DeviceMetrics>) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            tap.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
        )?;
        Ok(Net {
            tap,
            mac,
            epoll,
            active: None,
            rx_frame: vec![0u8; MAX_FRAME_LEN],
            rx_len: 0,
            rx_pending: false,
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            metrics,
        })
    }

    /// Moves frames from the tap to the guest until the tap is empty or buffers run out.
    fn pump_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut delivered = false;
        loop {
            if !self.rx_pending {
                match self.tap.recv(&mut self.rx_frame) {
                    Ok(n) => {
                        self.rx_len = n;
                        self.rx_pending = true;
                    }
                    Err(_) => break,
                }
            }
            match deliver_rx(
                &active.mem,
                &mut active.rx,
                &self.rx_frame[..self.rx_len],
                &self.metrics,
            ) {
                RxOutcome::NoBuffer => {
                    // Out of buffers: ask the driver to notify when it adds some, and retry
                    // at once if it did meanwhile.
                    if !active.rx.enable_notification(&active.mem).unwrap_or(false) {
                        break;
                    }
                }
                RxOutcome::Delivered | RxOutcome::Dropped => {
                    delivered = true;
                    self.rx_pending = false;
                }
            }
        }
        if delivered && active.rx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_NET_F_MAC
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: ctx.queues.len(),
            });
        }
        let tx = ctx.queues.remove(TX);
        let rx = ctx.queues.remove(RX);
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        self.pump_rx();
        Ok(())
    }
    fn process_queue(&mut self, index: usize) {
        match index {
            RX => self.pump_rx(),
            TX => {
                let Some(active) = self.active.as_mut() else {
                    return;
                };
                if process_tx(
                    &active.mem,
                    &mut active.tx,
                    &mut self.tap,
                    &mut self.tx_buf,
                    &self.metrics,
                ) {
                    active.interrupt.signal_used_queue();
                }
            }
            _ => {}
        }
    }
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }
    fn process_backend(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        // Consume the edge so the outer epoll stops reporting this fd.
        let _ = self.epoll.wait(0, &mut events);
        self.pump_rx();
    }
}
