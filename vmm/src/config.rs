//! Configuration: one struct per resource, from the command line or a JSON file
//! (`--config FILE.json`), validated before anything is built.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs (the x86_64 MP table and the aarch64 GIC layout hold 32).
pub const MAX_VCPUS: u8 = 32;
/// Default guest CID.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named in the configuration is missing.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// Memory too small or too large.
    #[error("Memory size {0} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB")]
    MemorySize(u64),
    /// vCPU count out of range.
    #[error("vCPU count {0} is outside 1..={MAX_VCPUS}")]
    VcpuCount(u64),
    /// Bad virtio-fs setup.
    #[error("--fs-socket and --fs-tag must be given together, and the tag must be 1 to 36 bytes")]
    Fs,
    /// Bad vsock CID.
    #[error("Guest CID {0} is reserved (must be 3 or more)")]
    Cid(u64),
    /// Bad MAC address.
    #[error("Invalid MAC address {0:?}")]
    Mac(String),
    /// Bad command line argument.
    #[error("{0}")]
    Usage(String),
    /// The JSON file cannot be read.
    #[error("Cannot read config file {0}")]
    ReadFile(PathBuf, #[source] std::io::Error),
    /// The JSON file is invalid.
    #[error("Invalid config file {0}")]
    Json(PathBuf, #[source] serde_json::Error),
}

/// Kernel, initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// vmlinux (ELF, PVH entry preferred) or bzImage.
    pub path: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// User command line, placed after the entries runv-vmm adds.
    #[serde(default)]
    pub cmdline: String,
}

/// vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPU count.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
}

fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
        }
    }
}

/// Where the guest console (ttyS0) goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SerialConfig {
    /// The monitor's stdin/stdout.
    #[default]
    Stdio,
    /// Appended to a file.
    File {
        /// File path.
        path: PathBuf,
    },
    /// A Unix socket runv-vmm listens on; one client at a time.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
    /// Discarded.
    None,
}

impl SerialConfig {
    /// Parses the `--serial` value: `stdio`, `none`, `unix:PATH` or a file path.
    pub fn parse(s: &str) -> Self {
        match s {
            "stdio" => SerialConfig::Stdio,
            "none" => SerialConfig::None,
            _ => match s.strip_prefix("unix:") {
                Some(p) => SerialConfig::Unix { path: p.into() },
                None => SerialConfig::File { path: s.into() },
            },
        }
    }
}

/// virtio-vsock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host Unix socket of the hybrid-vsock device.
    pub uds_path: PathBuf,
    /// Guest CID.
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

fn default_cid() -> u64 {
    DEFAULT_GUEST_CID
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Raw image path.
    pub path: PathBuf,
    /// Reject guest writes.
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest reads (GET_ID, at most 20 bytes); `runv-disk<N>` if not given.
    #[serde(default)]
    pub serial: Option<String>,
}

impl BlockConfig {
    /// Parses `PATH[,ro][,serial=ID]`.
    pub fn parse(s: &str) -> Self {
        let (rest, serial) = match s.rsplit_once(",serial=") {
            Some((rest, serial)) if !serial.contains(',') => (rest, Some(serial.to_string())),
            _ => (s, None),
        };
        let (path, read_only) = match rest.strip_suffix(",ro") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        BlockConfig {
            path: path.into(),
            read_only,
            serial,
        }
    }

    /// The `--disk` value that [`Self::parse`] reads back.
    pub fn to_arg(&self) -> String {
        let mut arg = self.path.display().to_string();
        if self.read_only {
            arg.push_str(",ro");
        }
        if let Some(serial) = &self.serial {
            arg.push_str(",serial=");
            arg.push_str(serial);
        }
        arg
    }
}

/// vhost-user-fs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// virtiofsd's socket.
    pub socket: PathBuf,
    /// Mount tag seen by the guest.
    pub tag: String,
}

/// virtio-net.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface name.
    pub tap: String,
    /// Guest MAC (`aa:bb:cc:dd:ee:ff`); a fixed locally administered one by default.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Socket path.
    pub socket: PathBuf,
}

/// Everything one VM needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// Kernel and initrd.
    pub kernel: KernelConfig,
    /// vCPUs and memory.
    #[serde(default)]
    pub machine: MachineConfig,
    /// Console.
    #[serde(default)]
    pub serial: SerialConfig,
    /// vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Disks, in order (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<BlockConfig>,
    /// Shared file system.
    #[serde(default)]
    pub fs: Option<FsConfig>,
    /// Network card.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Control socket.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Install seccomp filters (on unless debugging).
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Sandbox id, used to tag log lines.
    #[serde(default)]
    pub id: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Default MAC: locally administered, unicast.
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x72, 0x75, 0x6e, 0x76, 0x01];

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(ConfigError::Mac(s.to_string()));
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(ConfigError::Mac(s.to_string()));
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| ConfigError::Mac(s.to_string()))?;
    }
    Ok(mac)
}

fn must_exist(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.exists() {
        Ok(())
    } else {
        Err(ConfigError::MissingFile {
            what,
            path: path.to_path_buf(),
        })
    }
}

impl VmmConfig {
    /// A configuration with only a kernel.
    pub fn with_kernel(path: impl Into<PathBuf>) -> Self {
        VmmConfig {
            kernel: KernelConfig {
                path: path.into(),
                initrd: None,
                cmdline: String::new(),
            },
            machine: MachineConfig::default(),
            serial: SerialConfig::default(),
            vsock: None,
            disks: Vec::new(),
            fs: None,
            net: None,
            api: None,
            seccomp: true,
            id: None,
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::ReadFile(path.to_path_buf(), e))?;
        serde_json::from_str(&text).map_err(|e| ConfigError::Json(path.to_path_buf(), e))
    }

    /// Checks everything that can be checked before building.
    pub fn validate(&self) -> Result<(), ConfigError> {
        must_exist("Kernel image", &self.kernel.path)?;
        if let Some(initrd) = &self.kernel.initrd {
            must_exist("Initrd", initrd)?;
        }
        let m = self.machine.memory_mib;
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m) {
            return Err(ConfigError::MemorySize(m));
        }
        if self.machine.vcpus == 0 || self.machine.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(u64::from(self.machine.vcpus)));
        }
        for d in &self.disks {
            must_exist("Disk image", &d.path)?;
        }
        if let Some(fs) = &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > 36 {
                return Err(ConfigError::Fs);
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) {
                return Err(ConfigError::Cid(v.guest_cid));
            }
        }
        if let Some(n) = &self.net {
            if let Some(mac) = &n.mac {
                parse_mac(mac)?;
            }
        }
        Ok(())
    }

    /// Parses command line arguments (without the program name).
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, ConfigError> {
        let mut args = args.into_iter();
        let mut kernel = None;
        let mut initrd = None;
        let mut cmdline = String::new();
        let mut machine = MachineConfig::default();
        let mut serial = SerialConfig::default();
        let mut vsock = None;
        let mut disks = Vec::new();
        let mut fs_socket = None;
        let mut fs_tag = None;
        let mut net = None;
        let mut api = None;
        let mut seccomp = true;
        let mut id = None;
        let mut config_file: Option<PathBuf> = None;
        let mut other_flags = false;
        while let Some(flag) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| ConfigError::Usage(format!("{name} needs a value")))
            };
            if flag != "--config" && flag != "--no-seccomp" && flag != "--id" {
                other_flags = true;
            }
            match flag.as_str() {
                "--kernel" => kernel = Some(PathBuf::from(value("--kernel")?)),
                "--initrd" => initrd = Some(PathBuf::from(value("--initrd")?)),
                "--cmdline" => cmdline = value("--cmdline")?,
                "--vcpus" => {
                    let v = value("--vcpus")?;
                    let n: u64 = v
                        .parse()
                        .map_err(|_| ConfigError::Usage(format!("--vcpus: not a number: {v}")))?;
                    machine.vcpus = u8::try_from(n).map_err(|_| ConfigError::VcpuCount(n))?;
                }
                "--memory-mib" => {
                    let v = value("--memory-mib")?;
                    machine.memory_mib = v.parse().map_err(|_| {
                        ConfigError::Usage(format!("--memory-mib: not a number: {v}"))
                    })?;
                }
                "--serial" => serial = SerialConfig::parse(&value("--serial")?),
                "--vsock-uds" => {
                    vsock = Some(VsockConfig {
                        uds_path: value("--vsock-uds")?.into(),
                        guest_cid: DEFAULT_GUEST_CID,
                    })
                }
                "--disk" => disks.push(BlockConfig::parse(&value("--disk")?)),
                "--fs-socket" => fs_socket = Some(PathBuf::from(value("--fs-socket")?)),
                "--fs-tag" => fs_tag = Some(value("--fs-tag")?),
                "--net-tap" => {
                    net = Some(NetConfig {
                        tap: value("--net-tap")?,
                        mac: None,
                    })
                }
                "--net-mac" => {
                    let mac = value("--net-mac")?;
                    match net.as_mut() {
                        Some(n) => n.mac = Some(mac),
                        None => {
                            return Err(ConfigError::Usage(
                                "--net-mac must follow --net-tap".into(),
                            ))
                        }
                    }
                }
                "--api-socket" => {
                    api = Some(ApiConfig {
                        socket: value("--api-socket")?.into(),
                    })
                }
                "--no-seccomp" => seccomp = false,
                "--id" => id = Some(value("--id")?),
                "--config" => config_file = Some(PathBuf::from(value("--config")?)),
                other => return Err(ConfigError::Usage(format!("Unknown argument {other:?}"))),
            }
        }
        if let Some(file) = config_file {
            if other_flags {
                return Err(ConfigError::Usage(
                    "--config cannot be combined with other flags except --no-seccomp".into(),
                ));
            }
            let mut cfg = Self::from_json_file(&file)?;
            cfg.seccomp &= seccomp;
            if id.is_some() {
                cfg.id = id;
            }
            return Ok(cfg);
        }
        let fs = match (fs_socket, fs_tag) {
            (Some(socket), Some(tag)) => Some(FsConfig { socket, tag }),
            (None, None) => None,
            _ => return Err(ConfigError::Fs),
        };
        let kernel = kernel.ok_or_else(|| ConfigError::Usage("--kernel is required".into()))?;
        Ok(VmmConfig {
            kernel: KernelConfig {
                path: kernel,
                initrd,
                cmdline,
            },
            machine,
            serial,
            vsock,
            disks,
            fs,
            net,
            api,
            seccomp,
            id,
        })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn cli_full() {
        let c = VmmConfig::from_args(args(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "quiet",
            "--vcpus",
            "2",
            "--memory-mib",
            "256",
            "--serial",
            "unix:/s",
            "--vsock-uds",
            "/v",
            "--disk",
            "/d1,ro",
            "--disk",
            "/d2",
            "--fs-socket",
            "/f",
            "--fs-tag",
            "shared",
            "--net-tap",
            "tap0",
            "--net-mac",
            "02:00:00:00:00:01",
            "--api-socket",
            "/a",
            "--no-seccomp",
        ]))
        .unwrap();
        assert_eq!(c.machine.vcpus, 2);
        assert_eq!(c.serial, SerialConfig::Unix { path: "/s".into() });
        assert!(c.disks[0].read_only);
        assert!(!c.disks[1].read_only);
        assert_eq!(c.disks[0].serial, None);
        let d = BlockConfig::parse("/d,x.img,ro,serial=rootfs-c1");
        assert_eq!(d.path, PathBuf::from("/d,x.img"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("rootfs-c1"));
        assert_eq!(BlockConfig::parse(&d.to_arg()), d);
        let d = BlockConfig::parse("/d2,serial=s");
        assert!(!d.read_only);
        assert_eq!(d.serial.as_deref(), Some("s"));
        assert_eq!(c.fs.as_ref().unwrap().tag, "shared");
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        assert!(!c.seccomp);
    }

    #[test]
    fn cli_errors_are_clear() {
        let e = VmmConfig::from_args(args(&["--vcpus", "2"])).unwrap_err();
        assert_eq!(e.to_string(), "--kernel is required");
        let e = VmmConfig::from_args(args(&["--kernel", "/k", "--bogus"])).unwrap_err();
        assert!(e.to_string().contains("--bogus"));
        let e = VmmConfig::from_args(args(&["--kernel", "/k", "--fs-tag", "x"])).unwrap_err();
        assert!(matches!(e, ConfigError::Fs));
        let e = VmmConfig::from_args(args(&["--kernel"])).unwrap_err();
        assert!(e.to_string().contains("needs a value"));
    }

    #[test]
    fn validation() {
        let mut c = VmmConfig::with_kernel("/nonexistent/vmlinux");
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Kernel image /nonexistent/vmlinux does not exist"
        );
        c.kernel.path = "/proc/self/exe".into();
        c.validate().unwrap();
        c.machine.memory_mib = 8;
        assert!(matches!(c.validate(), Err(ConfigError::MemorySize(8))));
        c.machine.memory_mib = 128;
        c.machine.vcpus = 33;
        assert!(matches!(c.validate(), Err(ConfigError::VcpuCount(33))));
        c.machine.vcpus = 1;
        c.disks.push(BlockConfig::parse("/nonexistent.img"));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("Disk image"));
    }

    #[test]
    fn json_roundtrip_and_unknown_fields() {
        let json = r#"{"kernel":{"path":"/k","cmdline":"x"},"machine":{"vcpus":2},
            "serial":{"type":"file","path":"/log"},"disks":[{"path":"/d","read_only":true}]}"#;
        let c: VmmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.machine.memory_mib, 128);
        assert_eq!(
            c.serial,
            SerialConfig::File {
                path: "/log".into()
            }
        );
        assert!(c.seccomp);
        let bad = r#"{"kernel":{"path":"/k"},"machne":{}}"#;
        assert!(serde_json::from_str::<VmmConfig>(bad).is_err());
        let again: VmmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap()[5], 10);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
