//! virtio-mmio slots: one 4 KiB window and one interrupt line per device.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusError};
use crate::arch::MMIO_DEVICE_SIZE;
use crate::devices::virtio::mmio::{reg, MmioError, MmioTransport};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::metrics::DeviceMetrics;
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vm::{Vm, VmError};

/// Errors while adding a virtio-mmio device.
#[derive(Debug, thiserror::Error)]
pub enum MmioManagerError {
    /// No interrupt line left.
    #[error("No interrupt line left for another virtio device")]
    NoIrq,
    /// The transport cannot be created.
    #[error("Cannot create the virtio-mmio transport")]
    Transport(#[from] MmioError),
    /// Bus insertion failed.
    #[error("Cannot map the device")]
    Bus(#[from] BusError),
    /// KVM registration failed.
    #[error("Cannot wire the device to KVM")]
    Vm(#[from] VmError),
    /// eventfd creation failed.
    #[error("Cannot create the interrupt eventfd")]
    EventFd(#[source] std::io::Error),
}

/// One placed device.
#[derive(Debug, Clone)]
pub struct MmioDeviceInfo {
    /// Name used in metrics.
    pub name: String,
    /// Window base.
    pub base: u64,
    /// Interrupt line (GSI on x86_64, SPI number on aarch64).
    pub irq: u32,
    /// The transport.
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Hands out virtio-mmio windows and interrupt lines.
#[derive(Debug)]
pub struct MmioManager {
    next_base: u64,
    next_irq: u32,
    last_irq: u32,
    devices: Vec<MmioDeviceInfo>,
}

impl MmioManager {
    /// Windows from `base`, interrupt lines `first_irq..=last_irq`.
    pub fn new(base: u64, first_irq: u32, last_irq: u32) -> Self {
        MmioManager {
            next_base: base,
            next_irq: first_irq,
            last_irq,
            devices: Vec::new(),
        }
    }

    /// Places `device`: maps its window on `bus`, routes its interrupt through an irqfd and its
    /// queue notifications through ioeventfds.
    pub fn add(
        &mut self,
        vm: &Vm,
        bus: &mut Bus,
        mem: &GuestMemoryMmap,
        name: &str,
        device: Box<dyn VirtioDevice>,
        metrics: Arc<DeviceMetrics>,
    ) -> Result<&MmioDeviceInfo, MmioManagerError> {
        if self.next_irq > self.last_irq {
            return Err(MmioManagerError::NoIrq);
        }
        let irq = self.next_irq;
        let base = self.next_base;
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(MmioManagerError::EventFd)?;
        vm.register_irqfd(&irq_evt, gsi_for(irq))?;
        let interrupt = Arc::new(VirtioInterrupt::new(irq_evt, Arc::clone(&metrics)));
        let transport = MmioTransport::new(device, mem.clone(), interrupt, metrics)?;
        for (i, evt) in (0u32..).zip(transport.queue_evts().iter()) {
            vm.register_mmio_ioevent(evt, base + reg::QUEUE_NOTIFY, i)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(transport.clone(), base, MMIO_DEVICE_SIZE)?;
        self.next_irq += 1;
        self.next_base += MMIO_DEVICE_SIZE;
        self.devices.push(MmioDeviceInfo {
            name: name.to_string(),
            base,
            irq,
            transport,
        });
        Ok(self.devices.last().unwrap_or_else(|| unreachable!()))
    }

    /// Placed devices, in order.
    pub fn devices(&self) -> &[MmioDeviceInfo] {
        &self.devices
    }

    /// `virtio_mmio.device=4K@0x...:IRQ` entries for the kernel command line.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|d| format!("virtio_mmio.device=4K@{:#x}:{}", d.base, d.irq))
            .collect()
    }
}

/// The KVM GSI of interrupt line `irq`.
#[cfg(target_arch = "x86_64")]
fn gsi_for(irq: u32) -> u32 {
    irq
}

/// The KVM GSI of SPI `irq` (irqfd GSIs on arm64 are SPI numbers counted from 0).
#[cfg(target_arch = "aarch64")]
fn gsi_for(irq: u32) -> u32 {
    irq
}
