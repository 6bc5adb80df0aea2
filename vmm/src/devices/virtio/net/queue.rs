//! Pure virtio-net queue processing.
//!
//! With VIRTIO_F_VERSION_1 every frame on both queues starts with the 12-byte
//! `virtio_net_hdr_v1`; the tap is opened with `IFF_VNET_HDR` and the same header size, so
//! frames pass through unchanged. Guest chains are bounded by [`MAX_FRAME_LEN`].

use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT, Reader, Writer};

use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

/// Size of `virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame accepted from the guest: header + 64 KiB (no GSO is negotiated, so real
/// frames are MTU-sized; this only bounds what a guest can make us copy).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_550;

/// Where transmitted frames go.
pub trait FrameSink {
    /// Sends one frame (virtio-net header included).
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
}

impl FrameSink for Vec<Vec<u8>> {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.push(frame.to_vec());
        Ok(())
    }
}

/// Sends every frame the guest queued on the TX queue. Returns true when the guest should
/// be interrupted.
pub fn process_tx<S: FrameSink>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    sink: &mut S,
    buf: &mut Vec<u8>,
    metrics: &DeviceMetrics,
) -> bool {
    let mut used_any = false;
    'drain: loop {
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match Reader::new(mem, chain) {
                Ok(reader) if reader.available_bytes() <= MAX_FRAME_LEN => {
                    let len = reader.available_bytes();
                    buf.clear();
                    let mut reader = reader;
                    let sent = len >= VNET_HDR_LEN
                        && reader.read_to_end(buf).is_ok()
                        && sink.send(buf).is_ok();
                    if sent {
                        metrics.bytes_from_guest.add((len - VNET_HDR_LEN) as u64);
                    } else {
                        metrics.errors.inc();
                    }
                }
                _ => metrics.errors.inc(),
            }
            metrics.requests.inc();
            if queue.add_used(mem, head, 0).is_err() {
                metrics.errors.inc();
                break 'drain;
            }
            used_any = true;
        }
        // Ask for the next notification; send again if a frame came in meanwhile.
        if !queue.enable_notification(mem).unwrap_or(false) {
            break;
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// Result of offering one received frame to the RX queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into a guest buffer.
    Delivered,
    /// The guest's buffer was too small or invalid: the frame was dropped, the buffer used.
    Dropped,
    /// No buffer available: keep the frame and retry after the next RX notification.
    NoBuffer,
}

/// Writes `frame` (virtio-net header included) into the next RX buffer.
pub fn deliver_rx(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &[u8],
    metrics: &DeviceMetrics,
) -> RxOutcome {
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return RxOutcome::NoBuffer;
    };
    let head = chain.head_index();
    let (len, outcome) = match Writer::new(mem, chain) {
        Ok(mut w) if w.available_bytes() >= frame.len() && frame.len() >= VNET_HDR_LEN => {
            match w.write_all(frame) {
                Ok(()) => {
                    metrics
                        .bytes_to_guest
                        .add((frame.len() - VNET_HDR_LEN) as u64);
                    (frame.len(), RxOutcome::Delivered)
                }
                Err(_) => (0, RxOutcome::Dropped),
            }
        }
        _ => (0, RxOutcome::Dropped),
    };
    if outcome == RxOutcome::Dropped {
        metrics.errors.inc();
    }
    metrics.requests.inc();
    // `len` is bounded by the frame size, well below u32::MAX.
    if queue
        .add_used(mem, head, u32::try_from(len).unwrap_or(0))
        .is_err()
    {
        metrics.errors.inc();
    }
    outcome
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A used ring placed clear of the mock queue's other rings.
    const USED: u64 = 0x8000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// With VIRTIO_RING_F_EVENT_IDX, TX publishes avail_event after each drain and interrupts
    /// only as the driver's used_event asks.
    #[test]
    fn tx_event_idx() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        m.write_slice(&[0u8; 12], GuestAddress(0x10_0000)).unwrap();
        let frame = |i: u16| [d(0x10_0000, 12, 0, i)];
        let used_event = GuestAddress(vq.avail_addr().0 + 4 + 2 * 16);
        let avail_event = GuestAddress(USED + 4 + 8 * 16);
        let mut q: Queue = vq.create_queue().unwrap();
        // The mock's used ring overlaps the avail ring's used_event: move it out of the way.
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(true);
        let mut sink: Vec<Vec<u8>> = Vec::new();
        let metrics = DeviceMetrics::default();
        vq.add_desc_chains(&frame(0), 0).unwrap();
        vq.add_desc_chains(&frame(1), 1).unwrap();
        m.write_obj(5u16, used_event).unwrap();
        assert!(!process_tx(
            &m,
            &mut q,
            &mut sink,
            &mut Vec::new(),
            &metrics
        ));
        assert_eq!(sink.len(), 2);
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 2);
        m.write_obj(2u16, used_event).unwrap();
        vq.add_desc_chains(&frame(2), 2).unwrap();
        assert!(process_tx(&m, &mut q, &mut sink, &mut Vec::new(), &metrics));
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 3);
    }

    #[test]
    fn tx_frame_reaches_sink() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        m.write_slice(&[0u8; 12], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"payload", GuestAddress(0x20_0000)).unwrap();
        vq.add_desc_chains(
            &[
                d(0x10_0000, 12, VRING_DESC_F_NEXT, 1),
                d(0x20_0000, 7, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sink: Vec<Vec<u8>> = Vec::new();
        let metrics = DeviceMetrics::default();
        assert!(process_tx(&m, &mut q, &mut sink, &mut Vec::new(), &metrics));
        assert_eq!(sink.len(), 1);
        assert_eq!(&sink[0][12..], b"payload");
        assert_eq!(metrics.bytes_from_guest.get(), 7);
    }

    #[test]
    fn tx_malformed_chains_are_dropped() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                // shorter than the header
                d(0x10_0000, 4, 0, 0),
                // out of guest memory
                d(0xffff_ffff_0000, 100, 0, 0),
                // too large
                d(0x10_0000, 0x10_0000, 0, 0),
                // write-only buffer: nothing readable
                d(0x10_0000, 64, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut sink: Vec<Vec<u8>> = Vec::new();
        let metrics = DeviceMetrics::default();
        process_tx(&m, &mut q, &mut sink, &mut Vec::new(), &metrics);
        assert!(sink.is_empty());
        assert_eq!(metrics.errors.get(), 4);
        assert_eq!(metrics.requests.get(), 4);
    }

    #[test]
    fn rx_delivery_no_buffer_and_too_small() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        let metrics = DeviceMetrics::default();
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(b"hello");
        assert_eq!(
            deliver_rx(&m, &mut q, &frame, &metrics),
            RxOutcome::NoBuffer
        );

        vq.add_desc_chains(
            &[
                d(0x30_0000, 8, VRING_DESC_F_WRITE, 0),
                d(0x40_0000, 1526, VRING_DESC_F_WRITE, 0),
                d(0x50_0000, 1526, 0, 0),
            ],
            0,
        )
        .unwrap();
        assert_eq!(deliver_rx(&m, &mut q, &frame, &metrics), RxOutcome::Dropped);
        assert_eq!(
            deliver_rx(&m, &mut q, &frame, &metrics),
            RxOutcome::Delivered
        );
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x40_000c)).unwrap();
        assert_eq!(&got, b"hello");
        let used = vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!(used.len(), 17);
        // Read-only buffer offered for RX.
        assert_eq!(deliver_rx(&m, &mut q, &frame, &metrics), RxOutcome::Dropped);
    }
}
