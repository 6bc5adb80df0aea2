//! A guest's side of runv-vmm's virtio-vsock device, played in process: the real device
//! (`runv_vmm::devices::virtio::vsock::Vsock`, its queue processing and hybrid-vsock muxer)
//! behind its virtio-mmio transport on real guest memory, driven through registers and
//! split rings the way the guest's virtio-vsock driver does, with one stream connection.
//! This thread is also the monitor's event loop: it waits on the device's backend fd and
//! lets the device process it, and a queue notification runs the device's queue processing.

#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runv_vmm::device_manager::bus::BusDevice;
use runv_vmm::devices::virtio::mmio::{reg, status, MmioTransport};
use runv_vmm::devices::virtio::vsock::packet::{op, VsockHeader, HDR_LEN, TYPE_STREAM};
use runv_vmm::devices::virtio::vsock::Vsock;
use runv_vmm::devices::virtio::VirtioInterrupt;
use runv_vmm::metrics::DeviceMetrics;
use runv_vmm::vstate::memory::{create_guest_memory, GuestMemoryMmap};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::ring::{Buf, Ring, QUEUE_SIZE};

const GUEST_CID: u64 = 3;
/// The guest listens here; the host connects with `CONNECT 1024`.
pub const GUEST_PORT: u32 = 1024;
/// RX buffers: header and payload in 4 KiB, as Linux's virtio-vsock driver posts them.
const RX_BUF: u32 = 4096;
const RX_BASE: u64 = 0x10_0000;
const TX_HDR_BASE: u64 = 0x20_0000;
/// One payload buffer per TX slot, up to the device's 64 KiB packet limit.
const TX_DATA_BASE: u64 = 0x40_0000;
pub const TX_DATA_MAX: usize = 64 * 1024;
const TX_SLOTS: u16 = QUEUE_SIZE / 2;
/// Receive buffer space the guest announces, and when it tells the host about consumed bytes.
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
const CREDIT_UPDATE_EVERY: u32 = 64 * 1024;

/// A packet the guest received: header and, when asked for, the payload.
pub struct Received {
    pub hdr: VsockHeader,
    pub payload: Vec<u8>,
}

pub struct Guest {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    rx: Ring,
    tx: Ring,
    free_tx: Vec<u16>,
    peer_port: Option<u32>,
    rx_fwd_cnt: u32,
    credit_sent_at: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    _irq: EventFd,
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

impl Guest {
    /// Creates the device on `uds` and brings it up as the guest driver does.
    pub fn new(uds: &Path) -> Result<Guest> {
        let mem = create_guest_memory(&[(GuestAddress(0), 64 << 20)])?;
        let metrics = Arc::new(DeviceMetrics::default());
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone()?, metrics.clone()));
        let dev = Vsock::new(GUEST_CID, uds, metrics.clone())?;
        let mut t = MmioTransport::new(Box::new(dev), mem.clone(), interrupt, metrics)?;
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(&mut t, reg::STATUS, s);
        let rings = [
            Ring::new(0x1_0000),
            Ring::new(0x2_0000),
            Ring::new(0x3_0000),
        ];
        for (i, r) in rings.iter().enumerate() {
            wr(&mut t, reg::QUEUE_SEL, i as u32);
            wr(&mut t, reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
            wr(&mut t, reg::QUEUE_DESC_LOW, r.desc_addr() as u32);
            wr(&mut t, reg::QUEUE_AVAIL_LOW, r.avail_addr() as u32);
            wr(&mut t, reg::QUEUE_USED_LOW, r.used_addr() as u32);
            wr(&mut t, reg::QUEUE_READY, 1);
        }
        wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
        if !t.is_activated() {
            bail!("the vsock device did not activate");
        }
        let [rx, tx, _event] = rings;
        let mut g = Guest {
            mem,
            transport: t,
            rx,
            tx,
            free_tx: (0..TX_SLOTS).rev().collect(),
            peer_port: None,
            rx_fwd_cnt: 0,
            credit_sent_at: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            _irq: irq,
        };
        for i in 0..QUEUE_SIZE {
            g.post_rx(i)?;
        }
        g.transport.notify_queue(0);
        Ok(g)
    }

    fn post_rx(&mut self, desc: u16) -> Result<()> {
        let addr = RX_BASE + u64::from(desc) * u64::from(RX_BUF);
        let buf = Buf {
            addr,
            len: RX_BUF,
            device_writes: true,
        };
        self.rx.push(&self.mem, desc, &[buf])
    }

    /// Whether the host has connected and the guest accepted.
    pub fn connected(&self) -> bool {
        self.peer_port.is_some()
    }

    /// Bytes the guest may still send before the host's buffer is full.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    pub fn tx_slot_free(&self) -> bool {
        !self.free_tx.is_empty()
    }

    /// Waits up to `wait` for the device's backend (skipped when `wait` is zero and nothing
    /// is ready), lets the device process it, then takes what the device put in the rings.
    /// Received payloads are copied out when `keep_payload` (as a guest recv() would).
    pub fn pump(&mut self, wait: Duration, keep_payload: bool) -> Result<Vec<Received>> {
        if backend_ready(&self.transport, wait)? {
            self.transport.device_mut().process_backend();
        }
        while let Some((head, _)) = self.tx.pop_used(&self.mem)? {
            self.free_tx.push(head / 2);
        }
        let mut got = Vec::new();
        let mut reposted = false;
        while let Some((head, len)) = self.rx.pop_used(&self.mem)? {
            let addr = RX_BASE + u64::from(head) * u64::from(RX_BUF);
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr))?;
            let hdr = VsockHeader::decode(&raw);
            let plen = (hdr.len as usize).min((len as usize).saturating_sub(HDR_LEN));
            let mut payload = Vec::new();
            if keep_payload && plen > 0 {
                payload.resize(plen, 0);
                self.mem
                    .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))?;
            }
            self.post_rx(head)?;
            reposted = true;
            self.on_packet(&hdr, plen)?;
            got.push(Received { hdr, payload });
        }
        if reposted {
            self.transport.notify_queue(0);
        }
        if self.rx_fwd_cnt.wrapping_sub(self.credit_sent_at) >= CREDIT_UPDATE_EVERY {
            self.send(op::CREDIT_UPDATE, &[])?;
            self.flush_tx();
        }
        Ok(got)
    }

    fn on_packet(&mut self, hdr: &VsockHeader, plen: usize) -> Result<()> {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            op::REQUEST if hdr.dst_port == GUEST_PORT && self.peer_port.is_none() => {
                self.peer_port = Some(hdr.src_port);
                self.send(op::RESPONSE, &[])?;
                self.flush_tx();
            }
            op::RW => self.rx_fwd_cnt = self.rx_fwd_cnt.wrapping_add(plen as u32),
            op::CREDIT_REQUEST => {
                self.send(op::CREDIT_UPDATE, &[])?;
                self.flush_tx();
            }
            op::RST | op::SHUTDOWN => bail!("the host closed the connection (op {})", hdr.op),
            _ => {}
        }
        Ok(())
    }

    /// Queues one packet on TX (RW carries `payload`); `flush_tx` hands it to the device.
    pub fn send(&mut self, op: u16, payload: &[u8]) -> Result<()> {
        let peer_port = self.peer_port.context("not connected")?;
        let slot = self.free_tx.pop().context("no free TX slot")?;
        let hdr = VsockHeader {
            src_cid: GUEST_CID,
            dst_cid: 2,
            src_port: GUEST_PORT,
            dst_port: peer_port,
            len: payload.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: self.rx_fwd_cnt,
        };
        let hdr_addr = TX_HDR_BASE + u64::from(slot) * 64;
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(hdr_addr))?;
        let mut bufs = vec![Buf {
            addr: hdr_addr,
            len: HDR_LEN as u32,
            device_writes: false,
        }];
        if !payload.is_empty() {
            let data_addr = TX_DATA_BASE + u64::from(slot) * TX_DATA_MAX as u64;
            self.mem.write_slice(payload, GuestAddress(data_addr))?;
            bufs.push(Buf {
                addr: data_addr,
                len: payload.len() as u32,
                device_writes: false,
            });
        }
        self.tx.push(&self.mem, slot * 2, &bufs)?;
        self.tx_cnt = self.tx_cnt.wrapping_add(payload.len() as u32);
        self.credit_sent_at = self.rx_fwd_cnt;
        Ok(())
    }

    /// Notifies the TX queue: the device processes everything queued.
    pub fn flush_tx(&mut self) {
        self.transport.notify_queue(1);
    }
}

/// Polls the device's backend fd for up to `wait`.
fn backend_ready(t: &MmioTransport, wait: Duration) -> Result<bool> {
    let fd = t
        .device()
        .backend_fd()
        .context("the vsock device has no backend fd")?;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("poll");
    }
    Ok(n > 0)
}
