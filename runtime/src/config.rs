//! runv's configuration: `/etc/runv/config.toml`, optional.
//!
//! Every field has a built-in default that works on a host where `make install` ran, so no
//! file is needed. A file only names what differs; unknown keys are an error, so a typo never
//! goes unnoticed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where runv looks for its configuration unless `RUNV_CONFIG` names another file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/runv/config.toml";

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds an unknown or ill-typed key.
    #[error("Parse config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("Invalid config value {key}: {reason}")]
    Invalid {
        /// The key, e.g. `hypervisor.vcpus`.
        key: &'static str,
        /// Why it is rejected.
        reason: String,
    },
}

/// Which hypervisor runs the sandbox VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// runv-vmm where KVM runs a Linux guest, otherwise QEMU.
    #[default]
    Auto,
    /// QEMU (`-M microvm` on x86_64).
    Qemu,
    /// runv-vmm, runv's own KVM monitor.
    Builtin,
}

impl std::str::FromStr for HypervisorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "builtin" => Ok(Self::Builtin),
            other => Err(format!(
                "unknown hypervisor {other:?} (expected auto, qemu or builtin)"
            )),
        }
    }
}

impl std::fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Qemu => "qemu",
            Self::Builtin => "builtin",
        })
    }
}

/// How the hypervisor executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where it can boot a Linux guest, else TCG.
    #[default]
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// How a container's root reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// The host mounts the root into the sandbox's shared directory; the guest sees it over
    /// virtio-fs.
    #[default]
    Virtiofs,
    /// The image's read-only layers become an erofs image on a read-only virtio-blk disk; the
    /// guest puts a writable overlay (in guest memory) on top. Only for containers known when
    /// the VM boots; the others fall back to virtio-fs.
    Block,
}

impl std::fmt::Display for RootfsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Virtiofs => "virtiofs",
            Self::Block => "block",
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The VM.
    pub hypervisor: HypervisorConfig,
    /// The guest kernel and initramfs.
    pub guest: GuestConfig,
    /// Helper programs.
    pub binaries: BinariesConfig,
    /// State, timeouts, defaults of the runtime itself.
    pub runtime: RuntimeConfig,
}

/// `[hypervisor]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    /// `auto`, `qemu` or `builtin`.
    pub kind: HypervisorKind,
    /// `auto`, `kvm` or `tcg`.
    pub accel: AccelChoice,
    /// vCPUs of a sandbox VM.
    pub vcpus: u32,
    /// Guest memory of a sandbox VM, MiB.
    pub memory_mib: u32,
    /// Extra guest kernel parameters, appended to runv's own.
    pub kernel_params: String,
    /// Use KVM even where runv finds it cannot boot a Linux guest (kvm-pvm): for testing
    /// how far the builtin VMM gets on such a host. Off by default.
    pub force_kvm: bool,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            kind: HypervisorKind::Auto,
            accel: AccelChoice::Auto,
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            force_kvm: false,
        }
    }
}

/// `[guest]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// Uncompressed guest kernel (`vmlinux`, PVH entry).
    pub kernel: PathBuf,
    /// Initramfs whose `/init` is runv-agent.
    pub initrd: PathBuf,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::from("/usr/local/share/runv/guest/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/runv/guest/initrd.img"),
        }
    }
}

/// `[binaries]`: a bare name is looked up in `PATH`, then in /usr/local/bin and /usr/libexec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinariesConfig {
    /// QEMU for this architecture.
    pub qemu: PathBuf,
    /// runv's own VMM.
    pub runv_vmm: PathBuf,
    /// The virtio-fs daemon.
    pub virtiofsd: PathBuf,
    /// The vhost-user vsock daemon used with QEMU.
    pub vhost_device_vsock: PathBuf,
}

impl Default for BinariesConfig {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from(if cfg!(target_arch = "aarch64") {
                "qemu-system-aarch64"
            } else {
                "qemu-system-x86_64"
            }),
            runv_vmm: PathBuf::from("runv-vmm"),
            virtiofsd: PathBuf::from("virtiofsd"),
            vhost_device_vsock: PathBuf::from("vhost-device-vsock"),
        }
    }
}

/// `[runtime]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Where sandbox state lives, one directory per sandbox.
    pub state_dir: PathBuf,
    /// Container root used when none is given.
    pub default_rootfs: PathBuf,
    /// Longest wait for the guest agent to answer after the VM starts.
    pub boot_timeout_ms: u64,
    /// Longest wait for one agent request that is not a wait or a read.
    pub request_timeout_ms: u64,
    /// Longest wait for the guest to stop its containers and sync its filesystems (the
    /// agent's Shutdown) before the hypervisor is killed.
    pub shutdown_timeout_ms: u64,
    /// Guest log level: error, warn, info, debug.
    pub guest_log_level: String,
    /// Pod annotations that may change a sandbox (`io.runv.vcpus`, `io.runv.memory_mib`);
    /// a trailing `*` allows every name with that prefix. Empty: none may.
    pub allowed_annotations: Vec<String>,
    /// How container roots reach the guest: `virtiofs` or `block`.
    pub rootfs: RootfsMode,
    /// Where `block` keeps its read-only root images, reused across sandboxes.
    pub rootfs_cache_dir: PathBuf,
    /// Size the image cache is trimmed to (least recently used first), MiB.
    pub rootfs_cache_max_mib: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/run/runv"),
            default_rootfs: PathBuf::from("/usr/local/share/runv/rootfs/busybox"),
            boot_timeout_ms: 30_000,
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 3_000,
            guest_log_level: "warn".to_string(),
            allowed_annotations: Vec::new(),
            rootfs: RootfsMode::Virtiofs,
            rootfs_cache_dir: PathBuf::from("/var/cache/runv/rootfs"),
            rootfs_cache_max_mib: 4096,
        }
    }
}

impl RuntimeConfig {
    /// Whether the pod annotation `name` is allowed to take effect.
    pub fn annotation_allowed(&self, name: &str) -> bool {
        self.allowed_annotations
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }
    /// [`Self::boot_timeout_ms`] as a duration.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_millis(self.boot_timeout_ms)
    }
    /// [`Self::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// [`Self::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Built-in defaults: no file.
    Defaults,
    /// This file.
    File(PathBuf),
}

impl Config {
    /// Loads `RUNV_CONFIG` if set, else `/etc/runv/config.toml` if it exists, else the defaults.
    pub fn load() -> Result<(Self, ConfigSource), ConfigError> {
        if let Some(path) = std::env::var_os("RUNV_CONFIG") {
            let path = PathBuf::from(path);
            return Ok((Self::from_file(&path)?, ConfigSource::File(path)));
        }
        let path = Path::new(DEFAULT_CONFIG_PATH);
        if path.exists() {
            return Ok((
                Self::from_file(path)?,
                ConfigSource::File(path.to_path_buf()),
            ));
        }
        Ok((Self::default(), ConfigSource::Defaults))
    }

    /// Reads and validates one file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values a sandbox could not start with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_vm_size(self.hypervisor.vcpus, self.hypervisor.memory_mib)?;
        if !["error", "warn", "info", "debug", "trace"]
            .contains(&self.runtime.guest_log_level.as_str())
        {
            return Err(ConfigError::Invalid {
                key: "runtime.guest_log_level",
                reason: format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.runtime.guest_log_level
                ),
            });
        }
        if self.runtime.boot_timeout_ms == 0 || self.runtime.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "runtime.*_timeout_ms",
                reason: "timeouts must be above zero".to_string(),
            });
        }
        Ok(())
    }
}

/// Most vCPUs a sandbox VM may have (the guest kernel's NR_CPUS).
pub const MAX_VCPUS: u32 = 32;
/// Least guest memory the guest kernel and agent run in, MiB.
pub const MIN_MEMORY_MIB: u32 = 64;

/// Checks a VM size, from the config or the command line.
pub fn validate_vm_size(vcpus: u32, memory_mib: u32) -> Result<(), ConfigError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(ConfigError::Invalid {
            key: "hypervisor.vcpus",
            reason: format!("{vcpus} is not between 1 and {MAX_VCPUS}"),
        });
    }
    if memory_mib < MIN_MEMORY_MIB {
        return Err(ConfigError::Invalid {
            key: "hypervisor.memory_mib",
            reason: format!("{memory_mib} MiB is below the minimum of {MIN_MEMORY_MIB} MiB"),
        });
    }
    Ok(())
}

/// Resolves a helper binary: a path with a `/` as is, a bare name through `PATH`, then
/// /usr/local/bin and /usr/libexec (where Debian installs virtiofsd).
pub fn resolve_binary(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 || name.is_absolute() {
        return is_executable(name).then(|| name.to_path_buf());
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain([
            PathBuf::from("/usr/local/bin"),
            PathBuf::from("/usr/libexec"),
        ])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config: Config = toml::from_str("[hypervisor]\nvcpus = 2\n").unwrap();
        assert_eq!(config.hypervisor.vcpus, 2);
        assert_eq!(config.hypervisor.memory_mib, 256);
        assert_eq!(config.runtime.state_dir, PathBuf::from("/run/runv"));
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = toml::from_str::<Config>("[hypervisor]\nvcpu = 2\n").unwrap_err();
        assert!(err.to_string().contains("vcpu"), "{err}");
    }

    #[test]
    fn unknown_kind_is_rejected() {
        assert!(toml::from_str::<Config>("[hypervisor]\nkind = \"xen\"\n").is_err());
        assert_eq!(
            "builtin".parse::<HypervisorKind>(),
            Ok(HypervisorKind::Builtin)
        );
        assert!("xen".parse::<HypervisorKind>().is_err());
    }

    #[test]
    fn rootfs_mode_parses_and_rejects_unknown_values() {
        assert_eq!(Config::default().runtime.rootfs, RootfsMode::Virtiofs);
        let config: Config = toml::from_str("[runtime]\nrootfs = \"block\"\n").unwrap();
        assert_eq!(config.runtime.rootfs, RootfsMode::Block);
        let err = toml::from_str::<Config>("[runtime]\nrootfs = \"nfs\"\n").unwrap_err();
        assert!(err.to_string().contains("nfs"), "{err}");
    }

    #[test]
    fn vm_size_limits() {
        assert!(validate_vm_size(0, 256).is_err());
        assert!(validate_vm_size(MAX_VCPUS + 1, 256).is_err());
        assert!(validate_vm_size(1, MIN_MEMORY_MIB - 1).is_err());
        validate_vm_size(MAX_VCPUS, MIN_MEMORY_MIB).unwrap();
    }

    #[test]
    fn resolves_binaries_in_path_and_rejects_missing() {
        assert!(resolve_binary(Path::new("sh")).is_some());
        assert!(resolve_binary(Path::new("/nonexistent/runv-x")).is_none());
        assert!(resolve_binary(Path::new("runv-no-such-binary")).is_none());
    }
}
