//! The virtio-blk device: features, config space and the wiring of its one queue.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::Queue;

use super::request::{process_queue, BlockSettings, DiskBackend, ID_LEN, SECTOR_SIZE};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const QUEUE_SIZES: &[u16] = &[256];

/// A raw image file as a disk.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    size: u64,
}

impl DiskBackend for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Errors while opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("Cannot open disk image {0}")]
    Open(String, #[source] io::Error),
    /// The image size cannot be read.
    #[error("Cannot read the size of disk image {0}")]
    Size(String, #[source] io::Error),
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// virtio-blk.
pub struct Block {
    disk: FileDisk,
    settings: BlockSettings,
    acked_features: u64,
    active: Option<Active>,
    metrics: Arc<DeviceMetrics>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("size", &self.disk.size)
            .field("read_only", &self.settings.read_only)
            .finish()
    }
}

impl Block {
    /// Opens `path` (read-only when `read_only`), with `id` as its serial (GET_ID).
    pub fn new(
        path: &Path,
        read_only: bool,
        id: &str,
        metrics: Arc<DeviceMetrics>,
    ) -> Result<Self, BlockError> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Open(name.clone(), e))?;
        let size = file
            .metadata()
            .map_err(|e| BlockError::Size(name, e))?
            .len();
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block {
            disk: FileDisk { file, size },
            settings: BlockSettings {
                read_only,
                id: id_bytes,
            },
            acked_features: 0,
            active: None,
            metrics,
        })
    }

    /// `struct virtio_blk_config` up to `seg_max`: capacity in sectors (a trailing partial
    /// sector is not exposed), size_max (not offered), seg_max (the queue holds the header and
    /// the status besides the data segments).
    fn config_space(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&(self.disk.size / SECTOR_SIZE).to_le_bytes());
        let seg_max = u32::from(QUEUE_SIZES[0]) - 2;
        c[12..16].copy_from_slice(&seg_max.to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX;
        if self.settings.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }
    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: ctx.queues.len(),
            });
        }
        let queue = ctx.queues.remove(0);
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        Ok(())
    }
    fn process_queue(&mut self, _index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if process_queue(
            &active.mem,
            &mut active.queue,
            &mut self.disk,
            &self.settings,
            &self.metrics,
        ) {
            active.interrupt.signal_used_queue();
        }
    }
    fn reset(&mut self) -> bool {
        self.active = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_and_config_space() {
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        tmp.as_file().set_len(10 * 512 + 100).unwrap();
        let b = Block::new(tmp.as_path(), true, "id", Arc::default()).unwrap();
        let f = b.features();
        assert_ne!(f & VIRTIO_BLK_F_RO, 0);
        assert_ne!(f & VIRTIO_BLK_F_SEG_MAX, 0);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 10);
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), 254);
        let rw = Block::new(tmp.as_path(), false, "id", Arc::default()).unwrap();
        assert_eq!(rw.features() & VIRTIO_BLK_F_RO, 0);
        assert!(Block::new(Path::new("/nonexistent.img"), true, "id", Arc::default()).is_err());
    }
}
