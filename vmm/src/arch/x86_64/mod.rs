//! x86_64 boot setup.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

use vm_memory::GuestAddress;

/// Guest RAM ranges for `mem_size` bytes: one range below the MMIO gap, and the rest above
/// 4 GiB.
pub fn arch_memory_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= layout::MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), layout::MMIO_GAP_START),
            (
                GuestAddress(layout::MMIO_GAP_END),
                mem_size - layout::MMIO_GAP_START,
            ),
        ]
    }
}

/// Kernel command line entries runv-vmm always adds on x86_64 (before the device entries
/// and the user's command line).
pub const BASE_CMDLINE: &str = "reboot=k panic=1";
/// Console entry added unless the user's command line names a console.
pub const DEFAULT_CONSOLE: &str = "console=ttyS0";
