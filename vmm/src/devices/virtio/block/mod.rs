//! virtio-blk over a raw image file.

pub mod device;
pub mod request;

pub use device::Block;
pub use request::{process_queue, DiskBackend, SECTOR_SIZE};
