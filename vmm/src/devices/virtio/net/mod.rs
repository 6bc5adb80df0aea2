//! virtio-net on a host tap device.

pub mod device;
pub mod queue;
pub mod tap;

pub use device::Net;
