//! What the host offers: which kind of KVM, and so which backend and accelerator `auto` picks.

use std::path::Path;

use serde::Serialize;

use crate::config::{AccelChoice, Config, HypervisorKind};

/// The kind of `/dev/kvm` this host has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KvmKind {
    /// Hardware virtualization (VT-x, AMD-V, or arm64 KVM): runs a stock Linux guest.
    Hardware {
        /// The KVM module that provides it.
        module: String,
    },
    /// kvm-pvm, a software virtualization backend: it runs simple guest code, but a
    /// stock Linux guest stops in early boot, so Linux guests need TCG.
    Pvm,
    /// No usable `/dev/kvm`.
    Absent {
        /// Why not.
        reason: String,
    },
}

impl KvmKind {
    /// Whether KVM can run a stock Linux guest kernel.
    pub fn boots_linux(&self) -> bool {
        matches!(self, KvmKind::Hardware { .. })
    }
}

impl std::fmt::Display for KvmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvmKind::Hardware { module } => write!(f, "hardware KVM ({module})"),
            KvmKind::Pvm => {
                f.write_str("kvm-pvm (software virtualization; cannot boot a Linux guest)")
            }
            KvmKind::Absent { reason } => write!(f, "none ({reason})"),
        }
    }
}

/// Probes `/dev/kvm` and the loaded KVM modules.
pub fn detect_kvm() -> KvmKind {
    detect_kvm_in(Path::new("/"))
}

/// [`detect_kvm`] against another root, for tests.
pub fn detect_kvm_in(root: &Path) -> KvmKind {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return KvmKind::Absent {
            reason: "/dev/kvm does not exist".to_string(),
        };
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .is_err()
    {
        return KvmKind::Absent {
            reason: "/dev/kvm cannot be opened read-write".to_string(),
        };
    }
    let modules = root.join("sys/module");
    if modules.join("kvm_pvm").exists() {
        return KvmKind::Pvm;
    }
    for module in ["kvm_intel", "kvm_amd"] {
        if modules.join(module).exists() {
            return KvmKind::Hardware {
                module: module.to_string(),
            };
        }
    }
    if cfg!(target_arch = "aarch64") {
        return KvmKind::Hardware {
            module: "kvm (arm64)".to_string(),
        };
    }
    // KVM built into the host kernel shows no module directory of its own; the CPU flags
    // then tell hardware support apart.
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    if has_flag("vmx") || has_flag("svm") {
        return KvmKind::Hardware {
            module: "kvm (built in)".to_string(),
        };
    }
    KvmKind::Absent {
        reason: "/dev/kvm exists but neither kvm_intel, kvm_amd nor vmx/svm CPU flags were found"
            .to_string(),
    }
}

/// How a guest's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware KVM.
    Kvm,
    /// QEMU software emulation.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A resolved backend and accelerator, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// `qemu` or `builtin`, never `auto`.
    pub hypervisor: HypervisorKind,
    /// The accelerator.
    pub accel: Accel,
    /// One sentence on why.
    pub reason: String,
}

/// Errors choosing a backend.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// The builtin VMM was asked for on a host where it cannot run a Linux guest.
    #[error("The builtin hypervisor needs KVM that runs a Linux guest; this host has {0}")]
    BuiltinNeedsKvm(KvmKind),
    /// KVM was asked for but is not usable.
    #[error("accel = \"kvm\" needs KVM that runs a Linux guest; this host has {0}")]
    KvmUnavailable(KvmKind),
    /// TCG only exists in QEMU.
    #[error("accel = \"tcg\" is QEMU's; the builtin hypervisor runs on KVM only")]
    TcgNeedsQemu,
}

/// Resolves `auto` choices from the config (and command-line overrides) for this host.
pub fn choose(
    kind: HypervisorKind,
    accel: AccelChoice,
    kvm: &KvmKind,
) -> Result<Choice, ChoiceError> {
    let kvm_ok = kvm.boots_linux();
    match (kind, accel) {
        (HypervisorKind::Builtin, AccelChoice::Tcg) => Err(ChoiceError::TcgNeedsQemu),
        (HypervisorKind::Builtin, _) if !kvm_ok => Err(ChoiceError::BuiltinNeedsKvm(kvm.clone())),
        (HypervisorKind::Builtin, _) => Ok(Choice {
            hypervisor: HypervisorKind::Builtin,
            accel: Accel::Kvm,
            reason: "hypervisor = builtin".to_string(),
        }),
        (_, AccelChoice::Kvm) if !kvm_ok => Err(ChoiceError::KvmUnavailable(kvm.clone())),
        (HypervisorKind::Auto, AccelChoice::Auto | AccelChoice::Kvm) if kvm_ok => Ok(Choice {
            hypervisor: HypervisorKind::Builtin,
            accel: Accel::Kvm,
            reason: format!("{kvm} runs a Linux guest: runv-vmm is the fast path"),
        }),
        (HypervisorKind::Auto | HypervisorKind::Qemu, AccelChoice::Auto) => Ok(Choice {
            hypervisor: HypervisorKind::Qemu,
            accel: if kvm_ok { Accel::Kvm } else { Accel::Tcg },
            reason: if kvm_ok {
                format!("QEMU on {kvm}")
            } else {
                format!("KVM here is {kvm}: QEMU with TCG software emulation")
            },
        }),
        (HypervisorKind::Auto | HypervisorKind::Qemu, AccelChoice::Kvm) => Ok(Choice {
            hypervisor: HypervisorKind::Qemu,
            accel: Accel::Kvm,
            reason: "accel = kvm".to_string(),
        }),
        (HypervisorKind::Auto | HypervisorKind::Qemu, AccelChoice::Tcg) => Ok(Choice {
            hypervisor: HypervisorKind::Qemu,
            accel: Accel::Tcg,
            reason: "accel = tcg".to_string(),
        }),
    }
}

/// [`choose`] with the config's values and this host's KVM. With `hypervisor.force_kvm`,
/// a `/dev/kvm` that cannot boot Linux (kvm-pvm) is used all the same.
pub fn choose_for(
    config: &Config,
    kind_override: Option<HypervisorKind>,
) -> Result<Choice, ChoiceError> {
    let mut kvm = detect_kvm();
    if config.hypervisor.force_kvm && kvm == KvmKind::Pvm {
        kvm = KvmKind::Hardware {
            module: "kvm_pvm, forced by hypervisor.force_kvm".to_string(),
        };
    }
    choose(
        kind_override.unwrap_or(config.hypervisor.kind),
        config.hypervisor.accel,
        &kvm,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(modules: &[&str], cpu_flags: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        for m in modules {
            std::fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
        }
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cpuinfo"),
            format!("flags\t: fpu {cpu_flags}\n"),
        )
        .unwrap();
        root
    }

    #[test]
    fn detects_pvm_hardware_and_absence() {
        assert_eq!(
            detect_kvm_in(fake_root(&["kvm", "kvm_pvm"], "").path()),
            KvmKind::Pvm
        );
        assert_eq!(
            detect_kvm_in(fake_root(&["kvm", "kvm_intel"], "vmx").path()),
            KvmKind::Hardware {
                module: "kvm_intel".into()
            }
        );
        if cfg!(target_arch = "x86_64") {
            assert!(matches!(
                detect_kvm_in(fake_root(&["kvm"], "").path()),
                KvmKind::Absent { .. }
            ));
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            detect_kvm_in(empty.path()),
            KvmKind::Absent { .. }
        ));
    }

    #[test]
    fn auto_picks_tcg_on_pvm_and_builtin_on_hardware() {
        let c = choose(HypervisorKind::Auto, AccelChoice::Auto, &KvmKind::Pvm).unwrap();
        assert_eq!((c.hypervisor, c.accel), (HypervisorKind::Qemu, Accel::Tcg));
        let hw = KvmKind::Hardware {
            module: "kvm_intel".into(),
        };
        let c = choose(HypervisorKind::Auto, AccelChoice::Auto, &hw).unwrap();
        assert_eq!(
            (c.hypervisor, c.accel),
            (HypervisorKind::Builtin, Accel::Kvm)
        );
        let c = choose(HypervisorKind::Qemu, AccelChoice::Auto, &hw).unwrap();
        assert_eq!((c.hypervisor, c.accel), (HypervisorKind::Qemu, Accel::Kvm));
    }

    #[test]
    fn impossible_choices_are_errors() {
        assert!(choose(HypervisorKind::Builtin, AccelChoice::Auto, &KvmKind::Pvm).is_err());
        assert!(choose(HypervisorKind::Qemu, AccelChoice::Kvm, &KvmKind::Pvm).is_err());
        let hw = KvmKind::Hardware {
            module: "kvm_amd".into(),
        };
        assert!(choose(HypervisorKind::Builtin, AccelChoice::Tcg, &hw).is_err());
    }
}
