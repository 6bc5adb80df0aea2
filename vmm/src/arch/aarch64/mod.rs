//! aarch64 boot setup: Image loading, GICv3, device tree, PSCI vCPU start.

pub mod fdt;
pub mod gic;
pub mod layout;
pub mod regs;

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::loader::pe::PE;
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::vstate::memory::GuestMemoryMmap;

/// Kernel command line entries runv-vmm always adds on aarch64.
pub const BASE_CMDLINE: &str = "panic=1";
/// Console entry added unless the user's command line names a console.
pub const DEFAULT_CONSOLE: &str = "console=ttyS0";

/// Errors of the aarch64 boot setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Kernel loading.
    #[error("Cannot load the kernel Image")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// Initrd.
    #[error("Cannot load the initrd")]
    Initrd(#[source] std::io::Error),
    /// The initrd does not fit.
    #[error("The initrd does not fit in guest memory")]
    InitrdTooLarge,
    /// GIC creation.
    #[error("Cannot create the GICv3")]
    Gic(#[source] kvm_ioctls::Error),
    /// Device tree.
    #[error("Cannot build the device tree: {0}")]
    Fdt(String),
    /// vCPU registers.
    #[error("Cannot set up vCPU registers")]
    Regs(#[from] regs::RegsError),
}

/// Guest RAM: one range from [`layout::DRAM_START`].
pub fn arch_memory_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    vec![(GuestAddress(layout::DRAM_START), mem_size)]
}

/// Where the FDT goes: 2 MiB below the end of RAM.
pub fn fdt_address(mem: &GuestMemoryMmap) -> GuestAddress {
    let end = mem.last_addr().raw_value() + 1;
    GuestAddress(end - layout::FDT_MAX_SIZE)
}

/// Entry of the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry address (start of the Image).
    pub entry: GuestAddress,
}

/// Loads an arm64 `Image` at the start of RAM.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, ArchError> {
    let r = PE::load(mem, Some(GuestAddress(layout::DRAM_START)), file, None)
        .map_err(ArchError::LoadKernel)?;
    Ok(LoadedKernel {
        entry: r.kernel_load,
    })
}

/// An initrd in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct InitrdRegion {
    /// Guest address.
    pub addr: GuestAddress,
    /// Size.
    pub size: u64,
}

/// Loads the initrd right below the FDT, page aligned.
pub fn load_initrd(mem: &GuestMemoryMmap, file: &mut File) -> Result<InitrdRegion, ArchError> {
    let size = file.seek(SeekFrom::End(0)).map_err(ArchError::Initrd)?;
    file.seek(SeekFrom::Start(0)).map_err(ArchError::Initrd)?;
    let top = fdt_address(mem).raw_value();
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= layout::DRAM_START)
        .ok_or(ArchError::InitrdTooLarge)?;
    let len = usize::try_from(size).map_err(|_| ArchError::InitrdTooLarge)?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| ArchError::Initrd(std::io::Error::other(e.to_string())))?;
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

/// Writes `blob` (the FDT) at [`fdt_address`].
pub fn write_fdt(mem: &GuestMemoryMmap, blob: &[u8]) -> Result<GuestAddress, ArchError> {
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(ArchError::Fdt("device tree larger than 2 MiB".into()));
    }
    let addr = fdt_address(mem);
    mem.write_slice(blob, addr)
        .map_err(|e| ArchError::Fdt(e.to_string()))?;
    Ok(addr)
}
