//! The virtio-vsock device: queues RX (0), TX (1), event (2) and the guest CID in config.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::Queue;

use super::muxer::{MuxerError, VsockMuxer};
use super::packet::MAX_PAYLOAD;
use super::queue::{process_rx, process_tx, VsockBackend};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

const QUEUE_SIZES: &[u16] = &[256, 256, 256];
const RX: usize = 0;
const TX: usize = 1;

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    // The event queue is only used for transport resets, which runv-vmm never sends.
    _event: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// virtio-vsock with an in-process hybrid-vsock backend.
pub struct Vsock {
    cid: u64,
    muxer: VsockMuxer,
    active: Option<Active>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    metrics: Arc<DeviceMetrics>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock").field("cid", &self.cid).finish()
    }
}

impl Vsock {
    /// A device for guest `cid`, listening on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path, metrics: Arc<DeviceMetrics>) -> Result<Self, MuxerError> {
        Ok(Vsock {
            cid,
            muxer: VsockMuxer::new(uds_path, cid)?,
            active: None,
            tx_buf: Vec::with_capacity(MAX_PAYLOAD),
            rx_buf: vec![0u8; MAX_PAYLOAD],
            metrics,
        })
    }

    fn run(&mut self, tx: bool) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut notify = false;
        if tx {
            notify |= process_tx(
                &a.mem,
                &mut a.tx,
                &mut self.muxer,
                &mut self.tx_buf,
                &self.metrics,
            );
        }
        notify |= process_rx(
            &a.mem,
            &mut a.rx,
            &mut self.muxer,
            &mut self.rx_buf,
            &self.metrics,
        );
        // RX space freed by the guest may unblock TX that waited on pending replies.
        if !self.muxer.tx_blocked() {
            notify |= process_tx(
                &a.mem,
                &mut a.tx,
                &mut self.muxer,
                &mut self.tx_buf,
                &self.metrics,
            );
            notify |= process_rx(
                &a.mem,
                &mut a.rx,
                &mut self.muxer,
                &mut self.rx_buf,
                &self.metrics,
            );
        }
        if notify {
            a.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
        let event = ctx.queues.remove(2);
        let tx = ctx.queues.remove(TX);
        let rx = ctx.queues.remove(RX);
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            _event: event,
            interrupt: ctx.interrupt,
        });
        self.run(true);
        Ok(())
    }
    fn process_queue(&mut self, index: usize) {
        self.run(index == TX);
    }
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }
    fn process_backend(&mut self) {
        self.muxer.process_events();
        self.run(false);
    }
}
