//! x86_64 legacy devices on the port I/O bus: COM1, the i8042 controller, the boot timer.

use std::sync::{Arc, Mutex};

use super::bus::{Bus, BusError};
use crate::arch::x86_64::layout;
use crate::devices::boot_timer::BootTimer;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::IrqTrigger;
use crate::vstate::vm::{Vm, VmError};

/// Errors while adding legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// KVM registration failed.
    #[error("Cannot route a legacy interrupt")]
    Vm(#[from] VmError),
    /// Bus insertion failed.
    #[error("Cannot map a legacy device")]
    Bus(#[from] BusError),
}

/// The legacy devices, shared with the event loop.
#[derive(Debug, Clone)]
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
}

/// Interrupt lines for COM1 and the i8042, already routed to their IOAPIC pins.
pub fn legacy_irqs(vm: &Vm) -> Result<(IrqTrigger, IrqTrigger), LegacyError> {
    let new = || {
        IrqTrigger::new().map_err(|e| {
            LegacyError::Vm(VmError::Irqfd(
                0,
                kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EINVAL)),
            ))
        })
    };
    let serial = new()?;
    let i8042 = new()?;
    vm.register_irqfd(&serial.0, layout::COM1_IRQ)?;
    vm.register_irqfd(&i8042.0, layout::I8042_IRQ)?;
    Ok((serial, i8042))
}

/// Maps the devices on `pio`.
pub fn add_legacy_devices(
    pio: &mut Bus,
    serial: SerialDevice,
    i8042: I8042,
    boot_timer: BootTimer,
) -> Result<LegacyDevices, LegacyError> {
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = Arc::new(Mutex::new(i8042));
    pio.insert(serial.clone(), u64::from(layout::COM1_PORT), 8)?;
    pio.insert(i8042.clone(), u64::from(layout::I8042_PORT), 5)?;
    pio.insert(
        Arc::new(Mutex::new(boot_timer)),
        u64::from(layout::BOOT_TIMER_PORT),
        1,
    )?;
    Ok(LegacyDevices { serial, i8042 })
}
