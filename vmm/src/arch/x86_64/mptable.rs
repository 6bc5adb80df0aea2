//! Intel MultiProcessor Specification 1.4 table, so a guest without ACPI finds its vCPUs,
//! the IOAPIC and the ISA interrupt routing.
//!
//! The floating pointer and the configuration table are written at the EBDA (0x9fc00), which
//! leaves 1 KiB: room for 32 vCPUs.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::layout;

/// Most vCPUs the MP table (and so runv-vmm on x86_64) describes.
pub const MAX_SUPPORTED_CPUS: u8 = 32;

const APIC_VERSION: u8 = 0x14;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const BUS_ISA: u8 = 0;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const IRQ_FLAGS_DEFAULT: u16 = 0;
const MPC_HEADER_LEN: usize = 44;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const APIC_ADDR: u32 = 0xfee0_0000;
const IRQ_MAX: u8 = 23;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table.
    #[error("The MP table supports at most {MAX_SUPPORTED_CPUS} vCPUs, not {0}")]
    TooManyCpus(u8),
    /// The table does not fit in guest memory.
    #[error("The MP table does not fit in guest memory")]
    NotEnoughMemory,
}

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Builds the configuration table (header + entries) for `num_cpus` at address `table_addr`.
fn build_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(0u8); // processor entry
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_FLAG_ENABLED | if cpu == 0 { CPU_FLAG_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, BUS_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        entries.extend_from_slice(&[3, MP_INT]);
        entries.extend_from_slice(&IRQ_FLAGS_DEFAULT.to_le_bytes());
        entries.extend_from_slice(&[BUS_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT on the BSP, LINT1 = NMI on all.
    entries.extend_from_slice(&[4, MP_EXTINT]);
    entries.extend_from_slice(&IRQ_FLAGS_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[BUS_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_NMI]);
    entries.extend_from_slice(&IRQ_FLAGS_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[BUS_ISA, 0, 0xff, 1]);
    count += 2;

    // At most 32 CPUs: the table is about 1 KiB.
    let length = u16::try_from(MPC_HEADER_LEN + entries.len()).unwrap_or(u16::MAX);
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"RUNV-VMM");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Writes the MP floating pointer and table for `num_cpus` vCPUs.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let base = GuestAddress(layout::EBDA_START);
    let table_addr = base.unchecked_add(16);
    let table = build_table(num_cpus);
    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    let table_addr32 =
        u32::try_from(table_addr.raw_value()).map_err(|_| MptableError::NotEnoughMemory)?;
    fp.extend_from_slice(&table_addr32.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision 1.4
    fp.push(0); // checksum
    fp.extend_from_slice(&[0u8; 5]); // no default configuration, IMCR absent
    fp[10] = checksum(&fp);
    if table_addr.raw_value() + table.len() as u64 > 0xa0000 {
        return Err(MptableError::NotEnoughMemory);
    }
    mem.write_slice(&fp, base)
        .map_err(|_| MptableError::NotEnoughMemory)?;
    mem.write_slice(&table, table_addr)
        .map_err(|_| MptableError::NotEnoughMemory)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn checksums_and_counts() {
        let mem = create_guest_memory(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 4).unwrap();
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(layout::EBDA_START))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(fp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table_addr = u64::from(u32::from_le_bytes(fp[4..8].try_into().unwrap()));
        let mut header = [0u8; MPC_HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&header[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([header[34], header[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn constants_match_layout() {
        assert_eq!(u64::from(IOAPIC_ADDR), layout::IOAPIC_START);
        assert_eq!(u64::from(APIC_ADDR), layout::APIC_START);
        assert_eq!(u32::from(IRQ_MAX), layout::IRQ_MAX);
    }

    #[test]
    fn max_cpus_fit_and_more_fail() {
        let mem = create_guest_memory(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, MAX_SUPPORTED_CPUS).unwrap();
        assert!(matches!(
            setup_mptable(&mem, MAX_SUPPORTED_CPUS + 1),
            Err(MptableError::TooManyCpus(_))
        ));
    }
}
