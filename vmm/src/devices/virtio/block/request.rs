//! Pure virtio-blk queue processing: descriptor chains in, disk I/O and status bytes out.
//!
//! A request is a readable 16-byte header (type, reserved, sector), data buffers (readable for
//! writes, writable for reads), and a final writable status byte. Everything in it comes from
//! the guest: lengths and sectors are checked against the disk size, data moves through a
//! fixed-size bounce buffer, and a malformed chain is completed with no data written.

use std::io::{self, Read, Write};

use virtio_queue::{Queue, QueueT, Reader, Writer};

use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Bounce buffer size for data transfers.
const CHUNK: usize = 64 * 1024;

/// Storage behind a block device.
pub trait DiskBackend {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// An in-memory disk (tests and fuzzing).
impl DiskBackend for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = self
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let dst = self
            .get_mut(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Per-device settings the processing needs.
#[derive(Debug, Clone)]
pub struct BlockSettings {
    /// Reject writes.
    pub read_only: bool,
    /// GET_ID answer.
    pub id: [u8; ID_LEN],
}

/// Why a request failed before its status could be written.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain has no readable header.
    #[error("Descriptor chain has no request header")]
    MissingHeader,
    /// The chain has no writable status byte.
    #[error("Descriptor chain has no status byte")]
    MissingStatus,
    /// The chain points outside guest memory or overflows.
    #[error("Descriptor chain is invalid: {0}")]
    Chain(String),
}

/// Bytes of the next transfer step.
fn chunk_len(remaining: u64) -> usize {
    usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK))
}

fn transfer_in<D: DiskBackend>(
    disk: &mut D,
    data: &mut Writer<'_>,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; chunk_len(len)];
    let mut done = 0u64;
    while done < len {
        let n = chunk_len(len - done);
        disk.read_at(&mut buf[..n], offset + done)?;
        data.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

fn transfer_out<D: DiskBackend>(
    disk: &mut D,
    data: &mut Reader<'_>,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; chunk_len(len)];
    let mut done = 0u64;
    while done < len {
        let n = chunk_len(len - done);
        data.read_exact(&mut buf[..n])?;
        disk.write_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Range check: the request must fit inside the disk and be sector aligned in length.
fn request_range(sector: u64, len: u64, disk_size: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= disk_size && len % SECTOR_SIZE == 0).then_some(offset)
}

/// Executes one request; returns the bytes written into guest buffers (status included).
pub fn execute_request<D: DiskBackend>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    disk: &mut D,
    settings: &BlockSettings,
    metrics: &DeviceMetrics,
) -> Result<u32, RequestError> {
    let mut reader =
        Reader::new(mem, chain.clone()).map_err(|e| RequestError::Chain(e.to_string()))?;
    let mut writer = Writer::new(mem, chain).map_err(|e| RequestError::Chain(e.to_string()))?;
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|_| RequestError::MissingHeader)?;
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    let writable = writer.available_bytes();
    if writable == 0 {
        return Err(RequestError::MissingStatus);
    }
    let mut status_writer = writer
        .split_at(writable - 1)
        .map_err(|e| RequestError::Chain(e.to_string()))?;

    let status = match req_type {
        VIRTIO_BLK_T_IN => {
            let len = writer.available_bytes() as u64;
            match request_range(sector, len, disk.size()) {
                Some(offset) => match transfer_in(disk, &mut writer, offset, len) {
                    Ok(()) => {
                        metrics.bytes_to_guest.add(len);
                        VIRTIO_BLK_S_OK
                    }
                    Err(_) => VIRTIO_BLK_S_IOERR,
                },
                None => VIRTIO_BLK_S_IOERR,
            }
        }
        VIRTIO_BLK_T_OUT if settings.read_only => VIRTIO_BLK_S_IOERR,
        VIRTIO_BLK_T_OUT => {
            let len = reader.available_bytes() as u64;
            match request_range(sector, len, disk.size()) {
                Some(offset) => match transfer_out(disk, &mut reader, offset, len) {
                    Ok(()) => {
                        metrics.bytes_from_guest.add(len);
                        VIRTIO_BLK_S_OK
                    }
                    Err(_) => VIRTIO_BLK_S_IOERR,
                },
                None => VIRTIO_BLK_S_IOERR,
            }
        }
        VIRTIO_BLK_T_FLUSH => match disk.flush() {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(_) => VIRTIO_BLK_S_IOERR,
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().min(ID_LEN);
            match writer.write_all(&settings.id[..n]) {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(_) => VIRTIO_BLK_S_IOERR,
            }
        }
        _ => VIRTIO_BLK_S_UNSUPP,
    };
    if status != VIRTIO_BLK_S_OK {
        metrics.errors.inc();
    }
    status_writer
        .write_all(&[status])
        .map_err(|_| RequestError::MissingStatus)?;
    let written = writer.bytes_written() + 1;
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}

/// Processes every available request of `queue`. Returns true when the guest should be
/// interrupted.
pub fn process_queue<D: DiskBackend>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    disk: &mut D,
    settings: &BlockSettings,
    metrics: &DeviceMetrics,
) -> bool {
    let mut used_any = false;
    'drain: loop {
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match execute_request(mem, chain, disk, settings, metrics) {
                Ok(len) => len,
                Err(_) => {
                    metrics.errors.inc();
                    0
                }
            };
            metrics.requests.inc();
            if queue.add_used(mem, head, len).is_err() {
                metrics.errors.inc();
                break 'drain;
            }
            used_any = true;
        }
        // Ask for the next notification (avail_event with EVENT_IDX); drain again if a
        // request came in meanwhile.
        if !queue.enable_notification(mem).unwrap_or(false) {
            break;
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
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

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    /// Sets each descriptor's `next` to the following index.
    fn link(descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut d = SplitDescriptor::from(*d);
                d.set_next(i as u16 + 1);
                RawDescriptor::from(d)
            })
            .collect()
    }

    fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        mem.write_obj(t, GuestAddress(HDR)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn settings(ro: bool) -> BlockSettings {
        let mut id = [0u8; ID_LEN];
        id[..4].copy_from_slice(b"disk");
        BlockSettings { read_only: ro, id }
    }

    fn run(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        disk: &mut Vec<u8>,
        ro: bool,
    ) -> (u32, Option<u8>) {
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(&link(descs), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let m = DeviceMetrics::default();
        assert!(process_queue(mem, &mut q, disk, &settings(ro), &m));
        let used = vq.used().ring().ref_at(0).unwrap().load();
        let status = mem.read_obj::<u8>(GuestAddress(STATUS)).ok();
        (used.len(), status)
    }

    fn rw_chain(t: u32, data_len: u32, data_flags: u32) -> Vec<RawDescriptor> {
        let _ = t;
        vec![
            desc(HDR, 16, VRING_DESC_F_NEXT),
            desc(DATA, data_len, VRING_DESC_F_NEXT | data_flags),
            desc(STATUS, 1, VRING_DESC_F_WRITE),
        ]
    }

    /// With VIRTIO_RING_F_EVENT_IDX: after each drain the device asks for the next
    /// notification through avail_event (= next entry it will look at), and interrupts only
    /// when the used index passes the driver's used_event.
    #[test]
    fn event_idx_publishes_avail_event_and_follows_used_event() {
        let m = mem();
        let mut disk = vec![0u8; 8 * 512];
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let vq = MockSplitQueue::new(&m, 16);
        let flush = |first: u16| {
            [
                RawDescriptor::from(SplitDescriptor::new(
                    HDR,
                    16,
                    VRING_DESC_F_NEXT as u16,
                    first + 1,
                )),
                desc(STATUS, 1, VRING_DESC_F_WRITE),
            ]
        };
        let used_event = GuestAddress(vq.avail_addr().0 + 4 + 2 * 16);
        let avail_event = GuestAddress(USED + 4 + 8 * 16);
        let used_idx = GuestAddress(USED + 2);
        let mut q: Queue = vq.create_queue().unwrap();
        // The mock's used ring overlaps the avail ring's used_event: move it out of the way.
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(true);
        let (s, metrics) = (settings(false), DeviceMetrics::default());
        // Two requests; the driver wants an interrupt once entry 1 is used.
        vq.add_desc_chains(&flush(0), 0).unwrap();
        vq.add_desc_chains(&flush(2), 2).unwrap();
        m.write_obj(1u16, used_event).unwrap();
        assert!(process_queue(&m, &mut q, &mut disk, &s, &metrics));
        assert_eq!(m.read_obj::<u16>(used_idx).unwrap(), 2);
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 2);
        // One more, but the driver asks for an interrupt only after entry 9: none now.
        m.write_obj(9u16, used_event).unwrap();
        vq.add_desc_chains(&flush(4), 4).unwrap();
        assert!(!process_queue(&m, &mut q, &mut disk, &s, &metrics));
        assert_eq!(m.read_obj::<u16>(used_idx).unwrap(), 3);
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 3);
        // The driver moves used_event to the current entry: the next request interrupts.
        m.write_obj(3u16, used_event).unwrap();
        vq.add_desc_chains(&flush(6), 6).unwrap();
        assert!(process_queue(&m, &mut q, &mut disk, &s, &metrics));
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 4);
        assert_eq!(metrics.requests.get(), 4);
    }

    /// Without the feature: every drain interrupts and avail_event is left alone.
    #[test]
    fn without_event_idx_every_drain_interrupts() {
        let m = mem();
        let mut disk = vec![0u8; 8 * 512];
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let vq = MockSplitQueue::new(&m, 16);
        let avail_event = GuestAddress(USED + 4 + 8 * 16);
        m.write_obj(9u16, GuestAddress(vq.avail_addr().0 + 4 + 2 * 16))
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_used_ring_address(Some(USED as u32), Some(0));
        let (s, metrics) = (settings(false), DeviceMetrics::default());
        vq.add_desc_chains(
            &link(&[
                desc(HDR, 16, VRING_DESC_F_NEXT),
                desc(STATUS, 1, VRING_DESC_F_WRITE),
            ]),
            0,
        )
        .unwrap();
        assert!(process_queue(&m, &mut q, &mut disk, &s, &metrics));
        assert_eq!(m.read_obj::<u16>(avail_event).unwrap(), 0);
    }

    #[test]
    fn write_then_read_back() {
        let m = mem();
        let mut disk = vec![0u8; 8 * 512];
        m.write_slice(&[0xabu8; 1024], GuestAddress(DATA)).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 2);
        let (len, status) = run(&m, &rw_chain(1, 1024, 0), &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_OK));
        assert_eq!(len, 1);
        assert_eq!(disk[1024], 0xab);
        assert_eq!(disk[2047], 0xab);
        assert_eq!(disk[2048], 0);

        m.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        header(&m, VIRTIO_BLK_T_IN, 2);
        let (len, status) = run(&m, &rw_chain(0, 512, VRING_DESC_F_WRITE), &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_OK));
        assert_eq!(len, 513);
        assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), 0xab);
    }

    #[test]
    fn read_only_rejects_write() {
        let m = mem();
        let mut disk = vec![0u8; 4096];
        header(&m, VIRTIO_BLK_T_OUT, 0);
        m.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
        let (_, status) = run(&m, &rw_chain(1, 512, 0), &mut disk, true);
        assert_eq!(status, Some(VIRTIO_BLK_S_IOERR));
        assert!(disk.iter().all(|b| *b == 0));
    }

    #[test]
    fn out_of_range_and_overflowing_sectors() {
        let m = mem();
        let mut disk = vec![0u8; 4096];
        header(&m, VIRTIO_BLK_T_IN, 8);
        let (_, status) = run(&m, &rw_chain(0, 512, VRING_DESC_F_WRITE), &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_IOERR));
        header(&m, VIRTIO_BLK_T_IN, u64::MAX / 2);
        let (_, status) = run(&m, &rw_chain(0, 512, VRING_DESC_F_WRITE), &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_IOERR));
    }

    #[test]
    fn get_id_flush_and_unsupported() {
        let m = mem();
        let mut disk = vec![0u8; 4096];
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let (len, status) = run(&m, &rw_chain(8, 20, VRING_DESC_F_WRITE), &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_OK));
        assert_eq!(len, 21);
        let mut id = [0u8; 4];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"disk");

        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let chain = [
            desc(HDR, 16, VRING_DESC_F_NEXT),
            desc(STATUS, 1, VRING_DESC_F_WRITE),
        ];
        let (_, status) = run(&m, &chain, &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_OK));

        header(&m, 77, 0);
        let (_, status) = run(&m, &chain, &mut disk, false);
        assert_eq!(status, Some(VIRTIO_BLK_S_UNSUPP));
    }

    #[test]
    fn malformed_chains_complete_with_zero_length() {
        let m = mem();
        let mut disk = vec![0u8; 4096];
        m.write_obj(0x5au8, GuestAddress(STATUS)).unwrap();
        // Too short: header only.
        header(&m, VIRTIO_BLK_T_IN, 0);
        let (len, status) = run(&m, &[desc(HDR, 16, 0)], &mut disk, false);
        assert_eq!((len, status), (0, Some(0x5a)));
        // Header shorter than 16 bytes.
        let (len, _) = run(
            &m,
            &[
                desc(HDR, 8, VRING_DESC_F_NEXT),
                desc(STATUS, 1, VRING_DESC_F_WRITE),
            ],
            &mut disk,
            false,
        );
        assert_eq!(len, 0);
        // Wrong direction: status byte readable.
        let (len, _) = run(
            &m,
            &[desc(HDR, 16, VRING_DESC_F_NEXT), desc(STATUS, 1, 0)],
            &mut disk,
            false,
        );
        assert_eq!(len, 0);
        // Data outside guest memory.
        let (len, _) = run(
            &m,
            &[
                desc(HDR, 16, VRING_DESC_F_NEXT),
                desc(
                    0xffff_0000_0000,
                    512,
                    VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
                ),
                desc(STATUS, 1, VRING_DESC_F_WRITE),
            ],
            &mut disk,
            false,
        );
        assert_eq!(len, 0);
        // Huge length crossing the end of memory.
        let (len, _) = run(
            &m,
            &[
                desc(HDR, 16, VRING_DESC_F_NEXT),
                desc(DATA, u32::MAX, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE),
                desc(STATUS, 1, VRING_DESC_F_WRITE),
            ],
            &mut disk,
            false,
        );
        assert_eq!(len, 0);
    }

    #[test]
    fn request_in_an_indirect_table() {
        use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT;
        let m = mem();
        let mut disk = vec![0u8; 4096];
        disk[512..520].copy_from_slice(b"indirect");
        header(&m, VIRTIO_BLK_T_IN, 1);
        let table = GuestAddress(0x40_0000);
        let entries = link(&rw_chain(0, 512, VRING_DESC_F_WRITE));
        for (i, d) in entries.iter().enumerate() {
            m.write_obj(*d, GuestAddress(table.0 + 16 * i as u64))
                .unwrap();
        }
        let (len, status) = run(
            &m,
            &[desc(table.0, 48, VRING_DESC_F_INDIRECT)],
            &mut disk,
            false,
        );
        assert_eq!((len, status), (513, Some(VIRTIO_BLK_S_OK)));
        let mut got = [0u8; 8];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got, b"indirect");
        // An indirect table pointing outside guest memory completes with nothing written.
        let (len, _) = run(
            &m,
            &[desc(0xffff_0000_0000, 48, VRING_DESC_F_INDIRECT)],
            &mut disk,
            false,
        );
        assert_eq!(len, 0);
    }

    #[test]
    fn descriptor_loop_terminates() {
        let m = mem();
        let mut disk = vec![0u8; 4096];
        let vq = MockSplitQueue::new(&m, 16);
        // Two descriptors pointing at each other.
        vq.desc_table()
            .store(
                0,
                RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            )
            .unwrap();
        vq.desc_table()
            .store(
                1,
                RawDescriptor::from(SplitDescriptor::new(
                    STATUS,
                    1,
                    (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                    0,
                )),
            )
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let metrics = DeviceMetrics::default();
        process_queue(&m, &mut q, &mut disk, &settings(false), &metrics);
        assert_eq!(metrics.requests.get(), 1);
    }
}
