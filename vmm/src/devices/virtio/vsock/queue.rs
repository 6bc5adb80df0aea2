//! Pure vsock queue processing over guest memory.

use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT, Reader, Writer};

use super::packet::{VsockHeader, HDR_LEN, MAX_PAYLOAD};
use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

/// The host side of the device, as the queue processing sees it.
pub trait VsockBackend {
    /// A packet the guest sent. `payload` holds `hdr.len` bytes.
    fn send_pkt(&mut self, hdr: &VsockHeader, payload: &[u8]);
    /// The next packet for the guest, with at most `max_payload` payload bytes written into
    /// `buf`; returns the header (whose `len` is the payload length), or None.
    fn recv_pkt(&mut self, buf: &mut [u8], max_payload: usize) -> Option<VsockHeader>;
    /// Whether the backend has packets for the guest.
    fn has_pending_rx(&self) -> bool;
    /// Whether guest packets must wait (the backend's replies are backed up).
    fn tx_blocked(&self) -> bool;
}

/// Hands every guest TX packet to `backend`. Returns true when the guest should be
/// interrupted.
pub fn process_tx<B: VsockBackend>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    backend: &mut B,
    buf: &mut Vec<u8>,
    metrics: &DeviceMetrics,
) -> bool {
    let mut used_any = false;
    while !backend.tx_blocked() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Ask for the next notification; go on if a packet came in meanwhile.
            if queue.enable_notification(mem).unwrap_or(false) {
                continue;
            }
            break;
        };
        let head = chain.head_index();
        match parse_tx(mem, chain, buf) {
            Some(hdr) => {
                metrics.bytes_from_guest.add(u64::from(hdr.len));
                backend.send_pkt(&hdr, &buf[..hdr.len as usize]);
            }
            None => metrics.errors.inc(),
        }
        metrics.requests.inc();
        if queue.add_used(mem, head, 0).is_err() {
            metrics.errors.inc();
            break;
        }
        used_any = true;
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// Reads one packet from a TX chain; None for a malformed chain.
fn parse_tx(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Option<VsockHeader> {
    let mut reader = Reader::new(mem, chain).ok()?;
    let mut raw = [0u8; HDR_LEN];
    reader.read_exact(&mut raw).ok()?;
    let hdr = VsockHeader::decode(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD || len > reader.available_bytes() {
        return None;
    }
    buf.resize(len, 0);
    reader.read_exact(&mut buf[..len]).ok()?;
    Some(hdr)
}

/// Fills RX buffers with the backend's packets. Returns true when the guest should be
/// interrupted.
pub fn process_rx<B: VsockBackend>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    backend: &mut B,
    buf: &mut [u8],
    metrics: &DeviceMetrics,
) -> bool {
    let mut used_any = false;
    while backend.has_pending_rx() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Out of buffers: ask for a notification when the driver adds some; go on if it
            // did meanwhile.
            if queue.enable_notification(mem).unwrap_or(false) {
                continue;
            }
            break;
        };
        let head = chain.head_index();
        let len = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                let room = (w.available_bytes() - HDR_LEN)
                    .min(MAX_PAYLOAD)
                    .min(buf.len());
                match backend.recv_pkt(buf, room) {
                    Some(hdr) => {
                        let plen = (hdr.len as usize).min(room);
                        if w.write_all(&hdr.encode()).is_ok() && w.write_all(&buf[..plen]).is_ok() {
                            metrics.bytes_to_guest.add(plen as u64);
                            HDR_LEN + plen
                        } else {
                            metrics.errors.inc();
                            0
                        }
                    }
                    None => {
                        // Nothing after all: give the buffer back to the ring.
                        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                        break;
                    }
                }
            }
            _ => {
                metrics.errors.inc();
                0
            }
        };
        metrics.requests.inc();
        if queue
            .add_used(mem, head, u32::try_from(len).unwrap_or(0))
            .is_err()
        {
            metrics.errors.inc();
            break;
        }
        used_any = true;
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::super::packet::{op, TYPE_STREAM};
    use super::*;
    use std::collections::VecDeque;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A used ring placed clear of the mock queue's other rings.
    const USED: u64 = 0x8000;

    #[derive(Default)]
    struct Loop {
        got: Vec<(VsockHeader, Vec<u8>)>,
        out: VecDeque<(VsockHeader, Vec<u8>)>,
    }

    impl VsockBackend for Loop {
        fn send_pkt(&mut self, hdr: &VsockHeader, payload: &[u8]) {
            self.got.push((*hdr, payload.to_vec()));
        }
        fn recv_pkt(&mut self, buf: &mut [u8], max: usize) -> Option<VsockHeader> {
            let (mut h, p) = self.out.pop_front()?;
            let n = p.len().min(max);
            buf[..n].copy_from_slice(&p[..n]);
            h.len = n as u32;
            Some(h)
        }
        fn has_pending_rx(&self) -> bool {
            !self.out.is_empty()
        }
        fn tx_blocked(&self) -> bool {
            false
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    fn rw(len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            ..Default::default()
        }
    }

    #[test]
    fn tx_header_and_payload_split_across_descriptors() {
        let m = mem();
        m.write_slice(&rw(4).encode(), GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(b"ping", GuestAddress(0x20_0000)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                d(0x10_0000, HDR_LEN as u32, VRING_DESC_F_NEXT, 1),
                d(0x20_0000, 4, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut b = Loop::default();
        let metrics = DeviceMetrics::default();
        assert!(process_tx(&m, &mut q, &mut b, &mut Vec::new(), &metrics));
        assert_eq!(b.got.len(), 1);
        assert_eq!(b.got[0].1, b"ping");
    }

    #[test]
    fn tx_malformed_packets_dropped() {
        let m = mem();
        // Header claims more payload than the chain holds, and a huge length.
        m.write_slice(&rw(100).encode(), GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(&rw(u32::MAX).encode(), GuestAddress(0x11_0000))
            .unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                d(0x10_0000, HDR_LEN as u32 + 10, 0, 0),
                d(0x11_0000, HDR_LEN as u32, 0, 0),
                d(0x12_0000, 10, 0, 0),
                d(0xffff_0000_0000, 64, 0, 0),
                d(0x13_0000, 64, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut b = Loop::default();
        let metrics = DeviceMetrics::default();
        process_tx(&m, &mut q, &mut b, &mut Vec::new(), &metrics);
        assert!(b.got.is_empty());
        assert_eq!(metrics.errors.get(), 5);
    }

    /// With VIRTIO_RING_F_EVENT_IDX: RX out of buffers with packets pending asks the driver to
    /// notify when it adds one (avail_event = the next entry); TX publishes avail_event after
    /// draining; interrupts follow used_event.
    #[test]
    fn event_idx_rx_and_tx() {
        let m = mem();
        let rx = MockSplitQueue::new(&m, 16);
        let rx_avail_event = GuestAddress(USED + 4 + 8 * 16);
        let rx_used_event = GuestAddress(rx.avail_addr().0 + 4 + 2 * 16);
        let mut q: Queue = rx.create_queue().unwrap();
        // The mock's used ring overlaps the avail ring's used_event: move it out of the way.
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(true);
        let mut b = Loop::default();
        b.out.push_back((rw(0), b"ab".to_vec()));
        b.out.push_back((rw(0), b"cd".to_vec()));
        let metrics = DeviceMetrics::default();
        let mut buf = vec![0u8; MAX_PAYLOAD];
        rx.add_desc_chains(
            &[d(0x30_0000, HDR_LEN as u32 + 4, VRING_DESC_F_WRITE, 0)],
            0,
        )
        .unwrap();
        // One buffer for two packets: one delivered (used_event 0: interrupt), then the
        // device waits for the driver to add buffer 1.
        assert!(process_rx(&m, &mut q, &mut b, &mut buf, &metrics));
        assert_eq!(b.out.len(), 1);
        assert_eq!(m.read_obj::<u16>(rx_avail_event).unwrap(), 1);
        m.write_obj(7u16, rx_used_event).unwrap();
        rx.add_desc_chains(
            &[d(0x31_0000, HDR_LEN as u32 + 4, VRING_DESC_F_WRITE, 1)],
            1,
        )
        .unwrap();
        assert!(!process_rx(&m, &mut q, &mut b, &mut buf, &metrics));
        assert!(b.out.is_empty());

        let tx = MockSplitQueue::new(&m, 16);
        let tx_avail_event = GuestAddress(USED + 0x1000 + 4 + 8 * 16);
        m.write_slice(&rw(0).encode(), GuestAddress(0x10_0000))
            .unwrap();
        tx.add_desc_chains(&[d(0x10_0000, HDR_LEN as u32, 0, 0)], 0)
            .unwrap();
        let mut q: Queue = tx.create_queue().unwrap();
        q.set_used_ring_address(Some(USED as u32 + 0x1000), Some(0));
        q.set_event_idx(true);
        assert!(process_tx(&m, &mut q, &mut b, &mut Vec::new(), &metrics));
        assert_eq!(b.got.len(), 1);
        assert_eq!(m.read_obj::<u16>(tx_avail_event).unwrap(), 1);
    }

    #[test]
    fn rx_fills_buffers_and_truncates_to_room() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut b = Loop::default();
        b.out.push_back((rw(0), b"0123456789".to_vec()));
        let metrics = DeviceMetrics::default();
        let mut buf = vec![0u8; MAX_PAYLOAD];
        // No buffers: nothing happens, packet stays.
        assert!(!process_rx(&m, &mut q, &mut b, &mut buf, &metrics));
        assert_eq!(b.out.len(), 1);
        vq.add_desc_chains(
            &[d(0x30_0000, HDR_LEN as u32 + 4, VRING_DESC_F_WRITE, 0)],
            0,
        )
        .unwrap();
        assert!(process_rx(&m, &mut q, &mut b, &mut buf, &metrics));
        let mut raw = [0u8; HDR_LEN];
        m.read_slice(&mut raw, GuestAddress(0x30_0000)).unwrap();
        let h = VsockHeader::decode(&raw);
        assert_eq!(h.len, 4);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), HDR_LEN as u32 + 4);
    }

    #[test]
    fn rx_buffer_too_small_for_header() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[d(0x30_0000, 10, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut b = Loop::default();
        b.out.push_back((rw(0), b"x".to_vec()));
        let metrics = DeviceMetrics::default();
        let mut buf = vec![0u8; 16];
        process_rx(&m, &mut q, &mut b, &mut buf, &metrics);
        assert_eq!(metrics.errors.get(), 1);
        assert_eq!(b.out.len(), 1);
    }
}
