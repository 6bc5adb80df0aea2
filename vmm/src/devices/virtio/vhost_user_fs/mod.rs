//! virtio-fs through a vhost-user backend (virtiofsd).

pub mod device;

pub use device::VhostUserFs;
