//! Tiny PVH "kernels" assembled byte by byte: an ELF64 executable loaded at 1 MiB with a Xen
//! PVH entry note, entered in 32-bit protected mode by both runv-vmm and QEMU.

const LOAD_ADDR: u64 = 0x10_0000;
const CODE_OFF: u64 = 0x200;

/// First thing: `R` on COM1 (0x3f8), boot-timer mark 123 on port 0x440, a newline on COM1,
/// then `hlt` in a loop (the VM stays up and idle until it is killed).
pub fn first_byte_then_idle() -> Vec<u8> {
    vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'R', 0xee, // mov al, 'R'; out dx, al
        0x66, 0xba, 0x40, 0x04, // mov dx, 0x440
        0xb0, 0x7b, 0xee, // mov al, 123; out dx, al
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0xf4, 0xeb, 0xfd, // idle: hlt; jmp idle
    ]
}

/// An ELF64 executable loading `code` at 1 MiB, with a PVH entry note pointing at it.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let phoff = 64u64;
    let note_off = phoff + 2 * 56;
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e.extend_from_slice(&phoff.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 2, 64, 0, 0] {
        // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        e.extend_from_slice(&v.to_le_bytes());
    }
    let code_len = code.len() as u64;
    program_header(&mut e, 1, CODE_OFF, LOAD_ADDR, code_len); // PT_LOAD
    program_header(&mut e, 4, note_off, 0, 20); // PT_NOTE
                                                // Note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
    for v in [4u32, 4, 18] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(b"Xen\0");
    e.extend_from_slice(&0x10_0000u32.to_le_bytes());
    e.resize(0x200, 0);
    e.extend_from_slice(code);
    e
}

fn program_header(e: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64) {
    e.extend_from_slice(&ty.to_le_bytes());
    e.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    for v in [off, addr, addr, size, size, 4] {
        e.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_places_code_at_its_file_offset() {
        let code = first_byte_then_idle();
        let e = pvh_elf(&code);
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(&e[0x200..], &code[..]);
        assert_eq!(&e[64 + 112 + 12..64 + 112 + 16], b"Xen\0");
    }
}
