//! Places devices on the buses, wires their interrupts and notifications to KVM, and lists
//! the virtio-mmio devices for the kernel command line.

pub mod bus;
#[cfg(target_arch = "x86_64")]
pub mod legacy;
pub mod mmio;

pub use mmio::{MmioDeviceInfo, MmioManager};
