//! vCPU initialisation: PSCI 0.2, secondary vCPUs powered off, the boot vCPU entering the
//! kernel with x0 = FDT address in EL1h with interrupts masked.

use kvm_bindings::{
    kvm_vcpu_init, user_pt_regs, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM64,
    KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
};

use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// Errors while setting registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// KVM_ARM_PREFERRED_TARGET failed.
    #[error("Cannot get the preferred vCPU target")]
    PreferredTarget(#[source] kvm_ioctls::Error),
    /// KVM_ARM_VCPU_INIT failed.
    #[error("Cannot initialise the vCPU")]
    Init(#[source] kvm_ioctls::Error),
    /// KVM_SET_ONE_REG failed.
    #[error("Cannot set a core register")]
    SetReg(#[source] kvm_ioctls::Error),
}

const PSR_MODE_EL1H: u64 = 0x5;
const PSR_F_BIT: u64 = 0x40;
const PSR_I_BIT: u64 = 0x80;
const PSR_A_BIT: u64 = 0x100;
const PSR_D_BIT: u64 = 0x200;

/// KVM register id of the core register at byte `offset` in `struct kvm_regs`.
fn core_reg_id(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

/// KVM_ARM_VCPU_INIT with PSCI 0.2; secondary vCPUs start powered off. Call for every vCPU
/// before the GIC is created.
pub fn init_vcpu(vm: &Vm, vcpu: &Vcpu) -> Result<(), RegsError> {
    let mut kvi = kvm_vcpu_init::default();
    vm.fd()
        .get_preferred_target(&mut kvi)
        .map_err(RegsError::PreferredTarget)?;
    kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if vcpu.id() > 0 {
        kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.fd().vcpu_init(&kvi).map_err(RegsError::Init)
}

/// Boot registers of vCPU 0: enter at `entry` with `fdt` in x0.
pub fn setup_boot_regs(vcpu: &Vcpu, entry: u64, fdt: u64) -> Result<(), RegsError> {
    // `struct kvm_regs` starts with `struct user_pt_regs { regs[31], sp, pc, pstate }`.
    let regs_off = std::mem::offset_of!(user_pt_regs, regs);
    let pc_off = std::mem::offset_of!(user_pt_regs, pc);
    let pstate_off = std::mem::offset_of!(user_pt_regs, pstate);
    let set = |off: usize, v: u64| {
        vcpu.fd()
            .set_one_reg(core_reg_id(off), &v.to_le_bytes())
            .map(|_| ())
            .map_err(RegsError::SetReg)
    };
    set(
        pstate_off,
        PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT | PSR_MODE_EL1H,
    )?;
    set(pc_off, entry)?;
    set(regs_off, fdt)?;
    Ok(())
}
