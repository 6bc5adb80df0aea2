//! Device models. Legacy devices sit on the port I/O bus (x86_64) or MMIO bus (aarch64);
//! virtio devices sit behind [`virtio::mmio::MmioTransport`].

pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl IrqTrigger {
    /// New trigger over a fresh non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqTrigger(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    /// Raises the line (edge).
    pub fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
