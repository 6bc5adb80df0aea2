//! The KVM system handle and the capabilities runv-vmm needs.

use kvm_ioctls::{Cap, Kvm};

/// Errors while opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm cannot be opened.
    #[error("Cannot open /dev/kvm (is KVM available and accessible?)")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("Unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// A capability is missing.
    #[error("KVM lacks capability {0:?}")]
    MissingCap(Cap),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[cfg(target_arch = "x86_64")]
    #[error("Cannot read the CPUID entries KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// Capabilities checked at start.
#[cfg(target_arch = "x86_64")]
const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::PitState2,
    Cap::ExtCpuid,
];
#[cfg(target_arch = "aarch64")]
const REQUIRED_CAPS: &[Cap] = &[Cap::Ioeventfd, Cap::Irqfd, Cap::UserMemory, Cap::OneReg];

/// An open /dev/kvm with its checked capabilities.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Opens /dev/kvm and checks the API version and the required capabilities.
    pub fn new() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if i64::from(version) != i64::from(kvm_bindings::KVM_API_VERSION) {
            return Err(KvmError::ApiVersion(version));
        }
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(KvmError::MissingCap(*cap));
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(KvmContext { kvm, max_vcpus })
    }

    /// The KVM handle.
    pub fn fd(&self) -> &Kvm {
        &self.kvm
    }

    /// The most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// The CPUID entries KVM can expose, before per-vCPU normalization.
    #[cfg(target_arch = "x86_64")]
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }
}

/// Whether /dev/kvm can be opened at all (tests use it to decide what to skip).
pub fn kvm_available() -> bool {
    Kvm::new().is_ok()
}
