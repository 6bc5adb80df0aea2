//! The in-kernel GICv3.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::DeviceFd;

use super::layout;
use super::ArchError;
use crate::vstate::vm::Vm;

/// The created GIC and its address ranges (for the device tree).
#[derive(Debug)]
pub struct Gic {
    _fd: DeviceFd,
    /// Distributor (base, size).
    pub dist: (u64, u64),
    /// Redistributors (base, size).
    pub redist: (u64, u64),
}

fn set_attr(fd: &DeviceFd, group: u32, attr: u64, value: u64) -> Result<(), ArchError> {
    let value_ref = &value;
    let a = kvm_device_attr {
        group,
        attr,
        addr: value_ref as *const u64 as u64,
        flags: 0,
    };
    fd.set_device_attr(&a).map_err(ArchError::Gic)
}

/// Creates a GICv3 for `vcpus` vCPUs. Call after the vCPUs exist.
pub fn create_gic(vm: &Vm, vcpus: u64) -> Result<Gic, ArchError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let fd = vm.fd().create_device(&mut dev).map_err(ArchError::Gic)?;
    let redist_size = layout::GIC_REDIST_SIZE_PER_CPU * vcpus;
    set_attr(
        &fd,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        layout::GIC_DIST_START,
    )?;
    set_attr(
        &fd,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        layout::GIC_REDIST_START,
    )?;
    set_attr(
        &fd,
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        u64::from(layout::GIC_NR_IRQS),
    )?;
    set_attr(
        &fd,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        0,
    )?;
    Ok(Gic {
        _fd: fd,
        dist: (layout::GIC_DIST_START, layout::GIC_DIST_SIZE),
        redist: (layout::GIC_REDIST_START, redist_size),
    })
}
