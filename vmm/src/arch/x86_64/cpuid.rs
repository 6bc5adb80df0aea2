//! Per-vCPU normalization of the CPUID entries KVM supports.
//!
//! Starting from KVM_GET_SUPPORTED_CPUID, each vCPU gets its own APIC id and a topology of
//! one socket with `vcpu_count` cores of one thread each, the hypervisor bit, and the KVM
//! signature in leaf 0x4000_0000.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// "KVMKVMKVM\0\0\0" as three little-endian registers.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Smallest bit width that holds `count` distinct ids.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `entries` for vCPU `cpu_id` of `cpu_count`.
pub fn normalize_entries(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpu_count: u8) {
    let count = u32::from(cpu_count.max(1));
    let core_bits = id_bits(count);
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH.
                entry.ebx = (u32::from(cpu_id) << 24) | (count << 16) | (8 << 8);
                entry.ecx |= ECX_HYPERVISOR;
                // The in-kernel LAPIC emulates the TSC deadline timer.
                entry.ecx |= ECX_TSC_DEADLINE;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cache_level = (entry.eax >> 5) & 0x7;
                entry.eax &= 0x3fff;
                entry.eax |= (count - 1) << 26;
                if cache_level >= 3 {
                    entry.eax |= (count - 1) << 14;
                }
            }
            LEAF_TOPOLOGY | LEAF_EXT_TOPOLOGY => {
                entry.edx = u32::from(cpu_id);
                match entry.index {
                    // SMT level: one thread per core.
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (1 << 8) | entry.index;
                    }
                    // Core level: all vCPUs in one package.
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            LEAF_HYPERVISOR => {
                entry.eax = 0x4000_0001;
                entry.ebx = KVM_SIGNATURE[0];
                entry.ecx = KVM_SIGNATURE[1];
                entry.edx = KVM_SIGNATURE[2];
            }
            LEAF_AMD_SIZES => {
                // ECX[15:12]: APIC id size; ECX[7:0]: cores - 1.
                entry.ecx = (core_bits << 12) | (count - 1);
            }
            _ => {}
        }
    }
}

/// Returns a copy of `supported` normalized for one vCPU.
pub fn cpuid_for_vcpu(supported: &CpuId, cpu_id: u8, cpu_count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    normalize_entries(cpuid.as_mut_slice(), cpu_id, cpu_count);
    cpuid
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology() {
        let mut entries = vec![
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x4000_0000, 0),
        ];
        normalize_entries(&mut entries, 2, 4);
        assert_eq!(entries[0].ebx >> 24, 2);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 4);
        assert_ne!(entries[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(entries[0].edx & EDX_HTT, 0);
        assert_eq!(entries[1].edx, 2);
        assert_eq!(entries[1].ebx, 1);
        assert_eq!(entries[2].eax, 2);
        assert_eq!(entries[2].ebx, 4);
        let sig: Vec<u8> = [entries[3].ebx, entries[3].ecx, entries[3].edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig[..9], b"KVMKVMKVM");
    }

    #[test]
    fn id_bits_widths() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
