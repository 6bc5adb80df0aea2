//! Initial vCPU register state: general registers, segments, page tables, FPU, MSRs, LAPIC.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout;

/// How the vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `rbx` = start info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode on identity page tables, `rsi` = boot_params.
    Linux64,
    /// Real mode at `cs:ip` = 0:entry (test payloads).
    Real,
}

/// Errors while setting vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// KVM_SET_REGS failed.
    #[error("Cannot set general registers")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// KVM_GET_SREGS failed.
    #[error("Cannot get special registers")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("Cannot set special registers")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("Cannot set FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS failed or set fewer MSRs than asked.
    #[error("Cannot set MSRs")]
    SetMsrs,
    /// LAPIC get/set failed.
    #[error("Cannot configure the local APIC")]
    Lapic(#[source] kvm_ioctls::Error),
    /// Writing the GDT or page tables failed.
    #[error("Cannot write boot tables to guest memory")]
    GuestMemory,
}

/// Four 8-byte GDT entries.
const GDT_LIMIT: u16 = 4 * 8 - 1;
const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Sets the general registers for `mode`, entering at `entry`.
pub fn setup_regs(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = layout::PVH_INFO_START,
        EntryMode::Linux64 => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
        EntryMode::Real => {}
    }
    vcpu.set_regs(&regs).map_err(RegsError::SetRegs)
}

/// Sets segments, control registers, and (for long mode) the page tables.
pub fn setup_sregs<M: GuestMemory>(
    mem: &M,
    vcpu: &VcpuFd,
    mode: EntryMode,
) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    match mode {
        EntryMode::Real => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
        }
        EntryMode::Pvh => {
            configure_segments(mem, &mut sregs, gdt_entry(0xc09b, 0, 0xfffff))?;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
        }
        EntryMode::Linux64 => {
            configure_segments(mem, &mut sregs, gdt_entry(0xa09b, 0, 0xfffff))?;
            setup_page_tables(mem, &mut sregs)?;
        }
    }
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)
}

fn configure_segments<M: GuestMemory>(
    mem: &M,
    sregs: &mut kvm_sregs,
    code: u64,
) -> Result<(), RegsError> {
    let gdt = [
        gdt_entry(0, 0, 0),
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GuestAddress(layout::BOOT_GDT_START + (i as u64) * 8);
        mem.write_obj(*entry, addr)
            .map_err(|_| RegsError::GuestMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|_| RegsError::GuestMemory)?;

    let code_seg = kvm_segment_from_gdt(gdt[1], 1);
    let data_seg = kvm_segment_from_gdt(gdt[2], 2);
    let tss_seg = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code_seg;
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = tss_seg;
    sregs.cr0 |= X86_CR0_PE;
    sregs.efer = 0;
    Ok(())
}

fn setup_page_tables<M: GuestMemory>(mem: &M, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let write = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|_| RegsError::GuestMemory)
    };
    // One PML4 entry -> one PDPT entry -> 512 2 MiB pages: identity map of the first 1 GiB.
    write(layout::PDPTE_START | 0x03, layout::PML4_START)?;
    write(layout::PDE_START | 0x03, layout::PDPTE_START)?;
    for i in 0..512u64 {
        write((i << 21) | 0x83, layout::PDE_START + i * 8)?;
    }
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG | X86_CR0_PE | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// FPU control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MTRR_ENABLE: u64 = 0x800;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The boot MSRs: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Sets the boot MSRs.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::SetMsrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(|_| RegsError::SetMsrs)?;
    if set != entries.len() {
        return Err(RegsError::SetMsrs);
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers the PIC's ExtINT, LINT1 delivers NMI (virtual wire mode).
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(RegsError::Lapic)?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            // The register file is an array of C chars; reinterpret each byte.
            *b = lapic.regs[offset + i].to_ne_bytes()[0];
        }
        let value = set_delivery_mode(u32::from_le_bytes(bytes), mode).to_le_bytes();
        for (i, b) in value.iter().enumerate() {
            lapic.regs[offset + i] = i8::from_ne_bytes([*b]) as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(RegsError::Lapic)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn page_tables_identity_map() {
        let mem = create_guest_memory(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, layout::PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPTE_START | 3);
        let last: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 511 * 8))
            .unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        assert_ne!(sregs.efer & EFER_LMA, 0);
    }

    #[test]
    fn delivery_mode_bits() {
        assert_eq!(set_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(set_delivery_mode(0, APIC_MODE_EXTINT), 0x700);
    }
}
