//! x86_64 guest physical memory layout.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_6000  hvm_start_info (PVH), 0x6040 module list (initrd), 0x6080 memory map
//! 0x0000_7000  boot_params (zero page, Linux boot protocol)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, 0xa000 PDPTE, 0xb000 PDE (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA: MP table
//! 0x0010_0000  kernel (high memory); initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap start: virtio-mmio devices from 0xd000_0000
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than 3 GiB
//! ```

/// GDT address.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT address.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH start info.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Most PVH memory map entries.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 64;
/// Linux zero page (boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables for the 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Kernel command line capacity, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the EBDA, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: kernel load address floor.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// LAPIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's identity map page (below the TSS pages).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// KVM's TSS (three pages).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// First IRQ line for virtio-mmio devices (1 = i8042, 4 = COM1).
pub const IRQ_BASE: u32 = 5;
/// Last IRQ line (IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;
/// Serial COM1 port and line.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// i8042 keyboard controller data port (the range is 0x60..=0x64).
pub const I8042_PORT: u16 = 0x60;
/// i8042 IRQ.
pub const I8042_IRQ: u32 = 1;
/// Boot-timer marker port (same port as Firecracker's, 0x440; MMIO is not used).
pub const BOOT_TIMER_PORT: u16 = 0x440;
