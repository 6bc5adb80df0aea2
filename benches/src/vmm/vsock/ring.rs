//! The driver side of one split virtqueue in guest memory, as a guest's virtio driver keeps
//! it: descriptor table, available ring (written here), used ring (read here). The device runs
//! on the same thread, so plain stores are ordered enough.

use anyhow::{Context, Result};
use runv_vmm::vstate::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// Queue size used for every queue.
pub const QUEUE_SIZE: u16 = 256;

/// One buffer of a chain: guest address, length, whether the device writes it.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

pub struct Ring {
    /// Descriptor table at `base`, available ring at `base + 0x1000`, used ring at `+ 0x2000`.
    pub base: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    pub fn new(base: u64) -> Ring {
        Ring {
            base,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn desc_addr(&self) -> u64 {
        self.base
    }

    pub fn avail_addr(&self) -> u64 {
        self.base + 0x1000
    }

    pub fn used_addr(&self) -> u64 {
        self.base + 0x2000
    }

    /// Writes `bufs` as a chain starting at descriptor `head` and makes it available.
    pub fn push(&mut self, mem: &GuestMemoryMmap, head: u16, bufs: &[Buf]) -> Result<()> {
        for (i, b) in bufs.iter().enumerate() {
            let idx = head + u16::try_from(i)?;
            let last = i + 1 == bufs.len();
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let d = self.base + 16 * u64::from(idx);
            mem.write_obj(b.addr, GuestAddress(d))?;
            mem.write_obj(b.len, GuestAddress(d + 8))?;
            mem.write_obj(flags, GuestAddress(d + 12))?;
            mem.write_obj(if last { 0 } else { idx + 1 }, GuestAddress(d + 14))?;
        }
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(self.avail_addr() + 4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail_addr() + 2))
            .context("avail idx")?;
        Ok(())
    }

    /// The next chain the device has returned: (head descriptor, bytes written).
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<(u16, u32)>> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used_addr() + 2))?;
        if idx == self.used_seen {
            return Ok(None);
        }
        let e = self.used_addr() + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
        let id: u32 = mem.read_obj(GuestAddress(e))?;
        let len: u32 = mem.read_obj(GuestAddress(e + 4))?;
        self.used_seen = self.used_seen.wrapping_add(1);
        Ok(Some((u16::try_from(id)?, len)))
    }
}
