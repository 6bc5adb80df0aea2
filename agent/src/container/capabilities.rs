//! The process's capability sets from `process.capabilities`: bounding, effective,
//! permitted, inheritable and ambient.

use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use super::sync::{FailureKind, InitFailure};

/// Capability names by number (linux/capability.h).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The sets as bit masks (bit N = capability N).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapMasks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// The number of a capability name, e.g. `CAP_KILL` → 5.
pub fn number(name: &str) -> Option<u32> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

fn mask(set: Option<&Capabilities>) -> Result<u64, InitFailure> {
    let mut bits = 0u64;
    for cap in set.into_iter().flatten() {
        let name = format!("CAP_{cap}");
        let n = number(&name).ok_or_else(|| {
            InitFailure::new(
                FailureKind::InvalidArgument,
                format!("process.capabilities: unknown {name}"),
            )
        })?;
        bits |= 1 << n;
    }
    Ok(bits)
}

/// The masks `capabilities` asks for.
pub fn masks(capabilities: &LinuxCapabilities) -> Result<CapMasks, InitFailure> {
    Ok(CapMasks {
        bounding: mask(capabilities.bounding().as_ref())?,
        effective: mask(capabilities.effective().as_ref())?,
        permitted: mask(capabilities.permitted().as_ref())?,
        inheritable: mask(capabilities.inheritable().as_ref())?,
        ambient: mask(capabilities.ambient().as_ref())?,
    })
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn prctl(option: libc::c_int, arg: u32) -> Result<(), Errno> {
    // SAFETY: the capability prctl options used here take integer arguments only.
    let ret = unsafe { libc::prctl(option, libc::c_ulong::from(arg), 0, 0, 0) };
    Errno::result(ret).map(drop)
}

/// Before the uid changes: keep the permitted set across setuid and shrink the bounding
/// set (which needs CAP_SETPCAP, so it cannot wait).
pub fn prepare(masks: &CapMasks) -> Result<(), InitFailure> {
    prctl(libc::PR_SET_KEEPCAPS, 1).map_err(|e| InitFailure::os("keep capabilities", e))?;
    for cap in 0..=last_cap().min(63) {
        if masks.bounding & (1 << cap) == 0 {
            match prctl(libc::PR_CAPBSET_DROP, cap) {
                Ok(()) | Err(Errno::EINVAL) => {}
                Err(err) => return Err(InitFailure::os(format!("drop capability {cap}"), err)),
            }
        }
    }
    Ok(())
}

/// After the uid changed: set effective, permitted, inheritable and ambient.
pub fn apply(masks: &CapMasks) -> Result<(), InitFailure> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |bits: u64, high: bool| -> u32 {
        let shifted = if high { bits >> 32 } else { bits };
        u32::try_from(shifted & 0xffff_ffff).unwrap_or(0)
    };
    let data = [false, true].map(|high| CapData {
        effective: word(masks.effective, high),
        permitted: word(masks.permitted, high),
        inheritable: word(masks.inheritable, high),
    });
    // SAFETY: capset reads a version 3 header and two data structs, which is what we pass;
    // both live until the call returns.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    Errno::result(ret).map_err(|e| InitFailure::os("capset", e))?;
    // SAFETY: integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(ret).map_err(|e| InitFailure::os("clear ambient capabilities", e))?;
    // The kernel holds an ambient capability only while it is both permitted and
    // inheritable. One the spec lists without those (an unmodified `runc spec` does) is left
    // out, as runc leaves it out, instead of failing the container.
    let raisable = masks.ambient & masks.permitted & masks.inheritable;
    for cap in 0..=last_cap().min(63) {
        if raisable & (1 << cap) != 0 {
            // SAFETY: integer arguments only.
            let ret = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                )
            };
            Errno::result(ret)
                .map_err(|e| InitFailure::os(format!("raise ambient capability {cap}"), e))?;
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 0).map_err(|e| InitFailure::os("keep capabilities", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_KILL"), Some(5));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn spec_sets_become_masks() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"], "ambient": ["CAP_NET_BIND_SERVICE"]}"#,
        )
        .unwrap();
        let m = masks(&caps).unwrap();
        assert_eq!(m.bounding, 0b10_0001);
        assert_eq!(m.effective, 0b10_0000);
        assert_eq!(m.inheritable, 0);
        assert_eq!(m.ambient, 1 << 10);
    }
}
