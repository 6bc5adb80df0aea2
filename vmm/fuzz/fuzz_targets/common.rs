//! Turns fuzzer bytes into guest memory holding a split virtqueue whose descriptor table,
//! available ring and buffers all come from the input.

use runv_vmm::vstate::memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

pub const MEM_SIZE: u64 = 0x10_0000;
pub const QUEUE_SIZE: u16 = 16;
const DATA_START: u64 = 0x1_0000;

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    let s = b.get(i..i + 8).unwrap_or(&[]);
    a[..s.len()].copy_from_slice(s);
    u64::from_le_bytes(a)
}

/// Guest memory and a queue set up from `data`.
pub fn setup(mut data: &[u8]) -> Option<(GuestMemoryMmap, Queue)> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()?;
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let descs = take(&mut data, usize::from(QUEUE_SIZE) * 16);
    for i in 0..QUEUE_SIZE {
        let off = usize::from(i) * 16;
        // Addresses mostly land in memory, sometimes past its end.
        let addr = u64_at(descs, off) % (2 * MEM_SIZE);
        let meta = u64_at(descs, off + 8);
        let len = (meta & 0xffff_ffff) as u32;
        let flags = ((meta >> 32) & 0xffff) as u16;
        let next = ((meta >> 48) & 0xffff) as u16;
        vq.desc_table()
            .store(i, RawDescriptor::from(Descriptor::new(addr, len, flags, next)))
            .ok()?;
    }
    let ring = take(&mut data, usize::from(QUEUE_SIZE) * 2 + 2);
    let mut idx = [0u8; 2];
    idx[..ring.len().min(2)].copy_from_slice(&ring[..ring.len().min(2)]);
    for i in 0..QUEUE_SIZE {
        let o = 2 + usize::from(i) * 2;
        let v = ring.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        vq.avail().ring().ref_at(usize::from(i)).ok()?.store(v);
    }
    vq.avail().idx().store(u16::from_le_bytes(idx));
    mem.write_slice(take(&mut data, (MEM_SIZE - DATA_START) as usize), GuestAddress(DATA_START))
        .ok()?;
    let q: Queue = vq.create_queue().ok()?;
    Some((mem, q))
}
