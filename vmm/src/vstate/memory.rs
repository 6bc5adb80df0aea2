//! Guest memory backed by a memfd.
//!
//! Each guest RAM region is a `MAP_SHARED` mapping of one memfd at its own offset, so a
//! vhost-user backend (virtiofsd) can map the same pages from the file descriptor.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory as the VMM uses it (no dirty-page bitmap).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<()>;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("Cannot create the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    /// ftruncate on the memfd failed.
    #[error("Cannot size the guest memory memfd to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    /// Mapping a region failed.
    #[error("Cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// Region sizes do not fit the host.
    #[error("Guest memory region too large for this host")]
    TooLarge,
}

/// Creates a memfd of `size` bytes, sealed against shrinking.
pub fn create_memfd(name: &str, size: u64) -> Result<File, MemoryError> {
    let cname = CString::new(name)
        .map_err(|_| MemoryError::Memfd(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(size, e))?;
    // Sealing is a hardening step only; failure is not fatal.
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let _ = unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    Ok(file)
}

/// Creates guest memory for `ranges` (guest address, size), all backed by one memfd at
/// consecutive offsets.
pub fn create_guest_memory(ranges: &[(GuestAddress, u64)]) -> Result<GuestMemoryMmap, MemoryError> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let file = Arc::new(create_memfd("runv-guest-ram", total)?);
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for (addr, size) in ranges {
        let size_usize = usize::try_from(*size).map_err(|_| MemoryError::TooLarge)?;
        regions.push((
            *addr,
            size_usize,
            Some(FileOffset::from_arc(Arc::clone(&file), offset)),
        ));
        offset += size;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)
}

/// Total bytes of guest RAM.
pub fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryRegion};

    #[test]
    fn memfd_backed_and_shared() {
        let mem = create_guest_memory(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x100000), 0x10000),
        ])
        .unwrap();
        assert_eq!(mem_size(&mem), 0x20000);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x100010))
            .unwrap();
        let second = mem.iter().nth(1).unwrap();
        let fo = second.file_offset().unwrap();
        assert_eq!(fo.start(), 0x10000);
        // The same bytes are visible through the file.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(fo.file(), &mut buf, 0x10010).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }
}
