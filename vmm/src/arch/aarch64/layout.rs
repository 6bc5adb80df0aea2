//! aarch64 guest physical memory layout (below 2 GiB: devices; from 2 GiB: RAM).
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU, up to 32)
//! 0x0900_0000  16550 UART (ttyS0)           SPI 1
//! 0x0904_0000  boot-timer marker
//! 0x0a00_0000  virtio-mmio devices, 4 KiB each, SPI 16 upwards
//! 0x8000_0000  RAM: kernel at +0 (Image text offset), initrd and FDT at the top
//! ```

/// GIC distributor.
pub const GIC_DIST_START: u64 = 0x0800_0000;
/// GIC distributor size.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GIC redistributors.
pub const GIC_REDIST_START: u64 = 0x080a_0000;
/// Redistributor size per vCPU.
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// UART.
pub const SERIAL_ADDR: u64 = 0x0900_0000;
/// UART window.
pub const SERIAL_SIZE: u64 = 0x1000;
/// UART interrupt (SPI number, also its KVM GSI).
pub const SERIAL_IRQ: u32 = 1;
/// Boot-timer marker.
pub const BOOT_TIMER_ADDR: u64 = 0x0904_0000;
/// Boot-timer window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio device.
pub const MMIO_DEVICES_START: u64 = 0x0a00_0000;
/// First virtio SPI.
pub const IRQ_BASE: u32 = 16;
/// Last virtio SPI.
pub const IRQ_MAX: u32 = 95;
/// Interrupt lines the GIC is created with (SPIs + the 32 private ones).
pub const GIC_NR_IRQS: u32 = 128;
/// Start of RAM.
pub const DRAM_START: u64 = 0x8000_0000;
/// FDT size reserved at the top of RAM.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
