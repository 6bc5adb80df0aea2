//! Loading the kernel and initrd, and the boot information the kernel reads: the PVH
//! `hvm_start_info` with its memory map, or the Linux `boot_params` zero page with e820.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout;
use super::regs::EntryMode;
use crate::vstate::memory::GuestMemoryMmap;

const E820_RAM: u32 = 1;
const PVH_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 0x1000;

/// Errors while loading the kernel or writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be read.
    #[error("Cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    /// Neither an ELF vmlinux nor a bzImage.
    #[error("Kernel image is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat,
    /// linux-loader rejected the ELF image.
    #[error("Cannot load the ELF kernel")]
    LoadElf(#[source] linux_loader::loader::Error),
    /// linux-loader rejected the bzImage.
    #[error("Cannot load the bzImage kernel")]
    LoadBzImage(#[source] linux_loader::loader::Error),
    /// An ELF kernel without a PVH note whose entry is not 64-bit capable.
    #[error("The initrd does not fit in guest memory below the MMIO gap")]
    InitrdTooLarge,
    /// The initrd cannot be read.
    #[error("Cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    /// The command line does not fit.
    #[error("Kernel command line is longer than {} bytes", layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong,
    /// Writing boot information failed.
    #[error("Cannot write boot information to guest memory")]
    WriteBootInfo,
    /// A value the 32-bit boot protocol fields cannot hold.
    #[error("Boot protocol value {0:#x} does not fit in 32 bits")]
    Above4G(u64),
    /// Too many memory map entries.
    #[error("Too many memory map entries")]
    TooManyMemmapEntries,
}

/// Where and how the boot vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// Entry address.
    pub entry: GuestAddress,
    /// Entry mode.
    pub mode: EntryMode,
    /// End of the loaded kernel image.
    pub kernel_end: u64,
    /// bzImage setup header, passed on in boot_params.
    pub setup_header: Option<setup_header>,
}

/// An initrd placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct InitrdRegion {
    /// Guest address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Kernel image formats runv-vmm knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux.
    Elf,
    /// bzImage (Linux boot protocol).
    BzImage,
}

/// Detects the kernel format from its first bytes.
pub fn detect_format(file: &mut File) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; 0x210];
    file.seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    let n = read_up_to(file, &mut head).map_err(BootError::ReadKernel)?;
    file.seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownKernelFormat)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Loads `file` (vmlinux or bzImage) into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<KernelEntry, BootError> {
    let highmem = Some(GuestAddress(layout::HIGH_MEMORY_START));
    match detect_format(file)? {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, file, highmem).map_err(BootError::LoadElf)?;
            let (entry, mode) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr, EntryMode::Pvh),
                _ => (result.kernel_load, EntryMode::Linux64),
            };
            Ok(KernelEntry {
                entry,
                mode,
                kernel_end: result.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, file, highmem).map_err(BootError::LoadBzImage)?;
            Ok(KernelEntry {
                // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
                entry: result.kernel_load.unchecked_add(0x200),
                mode: EntryMode::Linux64,
                kernel_end: result.kernel_end,
                setup_header: result.setup_header,
            })
        }
    }
}

/// End (exclusive) of the RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    let end = mem.last_addr().raw_value() + 1;
    end.min(layout::MMIO_GAP_START)
}

/// Highest address (inclusive) the kernel accepts for the initrd: the bzImage header's
/// `initrd_addr_max`, or no limit below the MMIO gap for an ELF kernel.
pub fn initrd_addr_max(entry: &KernelEntry) -> Option<u64> {
    entry
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
}

/// Loads the initrd at the top of low RAM (and below `addr_max`), page aligned, above the
/// kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    kernel_end: u64,
    addr_max: Option<u64>,
) -> Result<InitrdRegion, BootError> {
    let size = file.seek(SeekFrom::End(0)).map_err(BootError::ReadInitrd)?;
    file.seek(SeekFrom::Start(0))
        .map_err(BootError::ReadInitrd)?;
    let top = match addr_max {
        Some(max) => low_ram_end(mem).min(max.saturating_add(1)),
        None => low_ram_end(mem),
    };
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitrdTooLarge)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge)?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| BootError::ReadInitrd(std::io::Error::other(e.to_string())))?;
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

/// Writes the NUL-terminated command line at [`layout::CMDLINE_START`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() + 1 > layout::CMDLINE_MAX_SIZE || cmdline.contains('\0') {
        return Err(BootError::CmdlineTooLong);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| BootError::WriteBootInfo)
}

/// The guest RAM map: (start, size) of each usable range.
pub fn ram_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let end = mem.last_addr().raw_value() + 1;
    let mut ranges = vec![(0, layout::EBDA_START)];
    let low_end = end.min(layout::MMIO_GAP_START);
    if low_end > layout::HIGH_MEMORY_START {
        ranges.push((
            layout::HIGH_MEMORY_START,
            low_end - layout::HIGH_MEMORY_START,
        ));
    }
    if end > layout::MMIO_GAP_END {
        ranges.push((layout::MMIO_GAP_END, end - layout::MMIO_GAP_END));
    }
    ranges
}

/// Writes `hvm_start_info`, the module list and the memory map for a PVH entry.
pub fn configure_pvh(mem: &GuestMemoryMmap, initrd: Option<InitrdRegion>) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = ram_ranges(mem)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    if memmap.len() > layout::PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyMemmapEntries);
    }
    let mut start_info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).map_err(|_| BootError::TooManyMemmapEntries)?,
        ..Default::default()
    };
    let mut params =
        BootParams::new::<hvm_start_info>(&start_info, GuestAddress(layout::PVH_INFO_START));
    if let Some(initrd) = initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = layout::PVH_MODLIST_START;
        params =
            BootParams::new::<hvm_start_info>(&start_info, GuestAddress(layout::PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: initrd.addr.raw_value(),
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST_START));
    }
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|_| BootError::WriteBootInfo)
}

/// A boot_params field must fit in 32 bits.
fn low32(v: u64) -> Result<u32, BootError> {
    u32::try_from(v).map_err(|_| BootError::Above4G(v))
}

/// Writes the Linux zero page with the e820 map for a 64-bit boot protocol entry.
pub fn configure_linux64(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = low32(layout::CMDLINE_START)?;
    params.hdr.cmdline_size = low32(cmdline_len as u64)?;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = low32(initrd.addr.raw_value())?;
        params.hdr.ramdisk_size = low32(initrd.size)?;
    }
    let ranges = ram_ranges(mem);
    if ranges.len() > params.e820_table.len() {
        return Err(BootError::TooManyMemmapEntries);
    }
    for (i, (addr, size)) in ranges.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries =
        u8::try_from(ranges.len()).map_err(|_| BootError::TooManyMemmapEntries)?;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|_| BootError::WriteBootInfo)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    fn mem(size: u64) -> GuestMemoryMmap {
        create_guest_memory(&super::super::arch_memory_ranges(size)).unwrap()
    }

    #[test]
    fn ram_ranges_small_and_large() {
        let small = mem(128 << 20);
        assert_eq!(
            ram_ranges(&small),
            vec![(0, 0x9fc00), (0x10_0000, (128 << 20) - 0x10_0000)]
        );
    }

    #[test]
    fn unknown_format_is_rejected() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all(b"not a kernel").unwrap();
        let mut f = tmp.into_file();
        assert!(matches!(
            detect_format(&mut f),
            Err(BootError::UnknownKernelFormat)
        ));
    }

    #[test]
    fn pvh_start_info_written() {
        let m = mem(64 << 20);
        let initrd = InitrdRegion {
            addr: GuestAddress(0x300_0000),
            size: 0x1000,
        };
        configure_pvh(&m, Some(initrd)).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_START_MAGIC);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.paddr, 0x300_0000);
        let second: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(layout::PVH_MEMMAP_START + 24))
            .unwrap();
        assert_eq!(second.addr, layout::HIGH_MEMORY_START);
    }

    #[test]
    fn initrd_goes_to_top_of_ram() {
        let m = mem(64 << 20);
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all(&[7u8; 5000]).unwrap();
        let mut f = tmp.into_file();
        let region = load_initrd(&m, &mut f, 0x20_0000, None).unwrap();
        assert_eq!(region.size, 5000);
        assert_eq!(region.addr.raw_value() % PAGE_SIZE, 0);
        assert!(region.addr.raw_value() + 5000 <= 64 << 20);
        let b: u8 = m.read_obj(region.addr.unchecked_add(4999)).unwrap();
        assert_eq!(b, 7);
    }

    #[test]
    fn initrd_respects_addr_max() {
        let m = mem(64 << 20);
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all(&[1u8; 4096]).unwrap();
        let mut f = tmp.into_file();
        let region = load_initrd(&m, &mut f, 0x20_0000, Some(0x1ff_ffff)).unwrap();
        assert!(region.addr.raw_value() + 4096 <= 0x200_0000);
        assert!(matches!(
            load_initrd(&m, &mut f, 0x20_0000, Some(0x20_0ffe)),
            Err(BootError::InitrdTooLarge)
        ));
    }

    #[test]
    fn cmdline_too_long() {
        let m = mem(64 << 20);
        let long = "a".repeat(layout::CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&m, &long),
            Err(BootError::CmdlineTooLong)
        ));
        write_cmdline(&m, "console=ttyS0").unwrap();
    }
}
