//! The KVM VM: guest memory slots, the in-kernel interrupt controller, irqfds and ioeventfds.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use super::memory::GuestMemoryMmap;

/// Errors while setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM_CREATE_VM failed.
    #[error("Cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("Cannot register guest memory slot {0} with KVM")]
    MemorySlot(u32, #[source] kvm_ioctls::Error),
    /// Too many memory regions.
    #[error("Too many guest memory regions")]
    TooManySlots,
    /// A region has no host mapping.
    #[error("Guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
    /// KVM_SET_TSS_ADDR failed.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot set the TSS address")]
    TssAddress(#[source] kvm_ioctls::Error),
    /// KVM_SET_IDENTITY_MAP_ADDR failed.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot set the identity map address")]
    IdentityMap(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("Cannot create the in-kernel interrupt controller")]
    IrqChip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// KVM_IRQFD failed.
    #[error("Cannot register an irqfd for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// KVM_IOEVENTFD failed.
    #[error("Cannot register an ioeventfd at {0:#x}")]
    Ioeventfd(u64, #[source] kvm_ioctls::Error),
}

/// A KVM VM with its guest memory registered.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM.
    pub fn new(kvm: &KvmContext) -> Result<Self, VmError> {
        let fd = kvm.fd().create_vm().map_err(VmError::Create)?;
        Ok(Vm { fd })
    }

    /// The KVM VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (index, region) in mem.iter().enumerate() {
            let slot = u32::try_from(index).map_err(|_| VmError::TooManySlots)?;
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::HostAddress(region.start_addr().raw_value()))?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which the VMM keeps for
            // the whole life of the VM, and slots do not overlap since regions do not.
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|e| VmError::MemorySlot(slot, e))?;
        }
        Ok(())
    }

    /// x86_64: TSS and identity map addresses, in-kernel IOAPIC/PIC/LAPIC and PIT.
    #[cfg(target_arch = "x86_64")]
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        use crate::arch::x86_64::layout;
        self.fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(VmError::IdentityMap)?;
        self.fd
            .set_tss_address(usize::try_from(layout::KVM_TSS_START).unwrap_or(usize::MAX))
            .map_err(VmError::TssAddress)?;
        self.fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit_config = kvm_bindings::kvm_pit_config {
            // Speaker dummy port, so the guest's PC-speaker probe does not exit to us.
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit_config).map_err(VmError::Pit)
    }

    /// Routes `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::Irqfd(gsi, e))
    }

    /// Makes guest writes of `value` (32-bit) to MMIO address `addr` signal `evt`.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(|e| VmError::Ioeventfd(addr, e))
    }
}
