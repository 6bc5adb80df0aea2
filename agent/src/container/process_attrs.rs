//! Per-process settings of the spec applied by the init process: rlimits, sysctls and
//! the OOM score adjustment.

use std::collections::HashMap;
use std::path::PathBuf;

use nix::sys::resource::{setrlimit, Resource};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use super::sync::{FailureKind, InitFailure};

fn resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Sets `process.rlimits`.
pub fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<(), InitFailure> {
    for limit in rlimits {
        if limit.soft() > limit.hard() {
            return Err(InitFailure::new(
                FailureKind::InvalidArgument,
                format!("rlimit {}: soft limit above hard limit", limit.typ()),
            ));
        }
        setrlimit(resource(limit.typ()), limit.soft(), limit.hard())
            .map_err(|e| InitFailure::os(format!("rlimit {}", limit.typ()), e))?;
    }
    Ok(())
}

/// The /proc/sys file of a sysctl key (`net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`).
pub fn sysctl_path(key: &str) -> Result<PathBuf, InitFailure> {
    if key.is_empty()
        || key
            .split(['.', '/'])
            .any(|part| part.is_empty() || part == "..")
    {
        return Err(InitFailure::new(
            FailureKind::InvalidArgument,
            format!("linux.sysctl: invalid key {key:?}"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Writes `linux.sysctl` (needs the container's /proc, before /proc/sys is made read-only).
pub fn set_sysctls(sysctls: &HashMap<String, String>) -> Result<(), InitFailure> {
    for (key, value) in sysctls {
        let path = sysctl_path(key)?;
        std::fs::write(&path, value).map_err(|e| {
            InitFailure::os(
                format!("sysctl {key}"),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    Ok(())
}

/// Writes `process.oomScoreAdj`.
pub fn set_oom_score_adj(value: i32) -> Result<(), InitFailure> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string()).map_err(|e| {
        InitFailure::os(
            "oom_score_adj",
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("").is_err());
        assert!(sysctl_path("net..x").is_err());
        assert!(sysctl_path("../../etc").is_err());
    }
}
