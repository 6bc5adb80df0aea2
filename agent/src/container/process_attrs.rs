//! Per-process settings of the spec applied by the init process: rlimits, sysctls, the
//! OOM score adjustment, the execution domain (personality), the I/O priority, the CPU
//! scheduler and the CPU affinity.

use std::collections::HashMap;
use std::path::PathBuf;

use nix::sys::resource::{setrlimit, Resource};
use oci_spec::runtime::{
    ExecCPUAffinity, IOPriorityClass, LinuxIOPriority, LinuxPersonality, LinuxPersonalityDomain,
    LinuxSchedulerFlag, LinuxSchedulerPolicy, PosixRlimit, PosixRlimitType, Scheduler,
};

use super::spec::SpecError;

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

/// `PER_LINUX` and `PER_LINUX32` of <linux/personality.h>.
const PER_LINUX: libc::c_ulong = 0x0000;
const PER_LINUX32: libc::c_ulong = 0x0008;

fn spec_error(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checks `linux.personality`: a domain only (no flag is defined by the spec yet).
pub fn validate_personality(personality: &LinuxPersonality) -> Result<(), SpecError> {
    match personality.flags().as_deref() {
        None | Some([]) => Ok(()),
        Some(flags) => Err(spec_error(
            "linux.personality.flags",
            format!("{flags:?}: no personality flag is supported"),
        )),
    }
}

/// Sets the execution domain of `linux.personality`.
pub fn set_personality(personality: &LinuxPersonality) -> Result<(), InitFailure> {
    let domain = match personality.domain() {
        LinuxPersonalityDomain::PerLinux => PER_LINUX,
        LinuxPersonalityDomain::PerLinux32 => PER_LINUX32,
    };
    // SAFETY: personality(2) takes a plain integer and touches no memory of ours.
    let ret = unsafe { libc::personality(domain) };
    nix::errno::Errno::result(ret)
        .map(drop)
        .map_err(|e| InitFailure::os("linux.personality", e))
}

/// The `ioprio_set` value of `process.ioPriority`: class in bits 13-15, level below.
pub fn io_priority_value(prio: &LinuxIOPriority) -> Result<libc::c_int, SpecError> {
    let class = match prio.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let level = prio.priority();
    let level = libc::c_int::try_from(level)
        .ok()
        .filter(|l| (0..=7).contains(l))
        .ok_or_else(|| {
            spec_error(
                "process.ioPriority.priority",
                format!("{level} is not in 0..=7"),
            )
        })?;
    Ok((class << 13) | level)
}

/// Sets `process.ioPriority` for the calling process.
pub fn set_io_priority(prio: &LinuxIOPriority) -> Result<(), InitFailure> {
    let value = io_priority_value(prio)
        .map_err(|e| InitFailure::new(FailureKind::InvalidArgument, e.to_string()))?;
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    // SAFETY: ioprio_set takes three integers; 0 means the calling process.
    let ret = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) };
    nix::errno::Errno::result(ret)
        .map(drop)
        .map_err(|e| InitFailure::os("process.ioPriority", e))
}

/// `struct sched_attr` of sched_setattr(2), with the utilization clamps (size 56).
#[repr(C)]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// The size of [`SchedAttr`], as the kernel's SCHED_ATTR_SIZE_VER1.
const SCHED_ATTR_SIZE: u32 = 56;
const _: () = assert!(std::mem::size_of::<SchedAttr>() == SCHED_ATTR_SIZE as usize);

/// The `sched_attr` of `process.scheduler`, checked the way the kernel would refuse it.
pub fn sched_attr(sched: &Scheduler) -> Result<SchedAttr, SpecError> {
    let policy = match sched.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => {
            return Err(spec_error(
                "process.scheduler.policy",
                "SCHED_ISO is not implemented by Linux",
            ))
        }
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let nice = sched.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(spec_error(
            "process.scheduler.nice",
            format!("{nice} is not in -20..=19"),
        ));
    }
    let priority = u32::try_from(sched.priority().unwrap_or(0)).map_err(|_| {
        spec_error(
            "process.scheduler.priority",
            format!("{:?} is negative", sched.priority()),
        )
    })?;
    let realtime = matches!(policy, 1 | 2);
    if realtime && !(1..=99).contains(&priority) {
        return Err(spec_error(
            "process.scheduler.priority",
            format!("{priority} is not in 1..=99, as SCHED_FIFO and SCHED_RR need"),
        ));
    }
    if !realtime && priority != 0 {
        return Err(spec_error(
            "process.scheduler.priority",
            format!("{priority}: only SCHED_FIFO and SCHED_RR take a priority"),
        ));
    }
    let mut flags = 0;
    for flag in sched.flags().iter().flatten() {
        flags |= match flag {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
            LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
        };
    }
    let (runtime, deadline, period) = (
        sched.runtime().unwrap_or(0),
        sched.deadline().unwrap_or(0),
        sched.period().unwrap_or(0),
    );
    if policy == 6 {
        let period_or_deadline = if period == 0 { deadline } else { period };
        if runtime == 0 || runtime > deadline || deadline > period_or_deadline {
            return Err(spec_error(
                "process.scheduler",
                "SCHED_DEADLINE needs 0 < runtime <= deadline <= period",
            ));
        }
    } else if runtime != 0 || deadline != 0 || period != 0 {
        return Err(spec_error(
            "process.scheduler",
            "runtime, deadline and period are for SCHED_DEADLINE only",
        ));
    }
    Ok(SchedAttr {
        size: SCHED_ATTR_SIZE,
        policy,
        flags,
        nice,
        priority,
        runtime,
        deadline,
        period,
        util_min: 0,
        util_max: 0,
    })
}

/// Applies `process.scheduler` to the calling process.
pub fn set_scheduler(sched: &Scheduler) -> Result<(), InitFailure> {
    let attr = sched_attr(sched)
        .map_err(|e| InitFailure::new(FailureKind::InvalidArgument, e.to_string()))?;
    // SAFETY: sched_setattr reads `attr.size` bytes of the struct, which is that size and
    // lives across the call; pid 0 is the calling thread, flags must be 0.
    let ret = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    nix::errno::Errno::result(ret)
        .map(drop)
        .map_err(|e| InitFailure::os("process.scheduler", e))
}

/// Parses a CPU list such as `0-3,7`.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("{list:?}: {s:?} is not a CPU number"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if first > last {
            return Err(format!("{list:?}: range {part} goes backwards"));
        }
        if last >= nix::sched::CpuSet::count() {
            return Err(format!("{list:?}: CPU {last} is out of range"));
        }
        cpus.extend(first..=last);
    }
    if cpus.is_empty() {
        return Err(format!("{list:?} names no CPU"));
    }
    Ok(cpus)
}

/// Checks `process.execCPUAffinity`.
pub fn validate_cpu_affinity(affinity: &ExecCPUAffinity) -> Result<(), SpecError> {
    if let Some(list) = affinity.initial() {
        parse_cpu_list(list).map_err(|e| spec_error("process.execCPUAffinity.initial", e))?;
    }
    if let Some(list) = affinity.cpu_affinity_final() {
        parse_cpu_list(list).map_err(|e| spec_error("process.execCPUAffinity.final", e))?;
    }
    Ok(())
}

/// Pins the calling process to the CPUs of `list` (from a validated spec).
pub fn set_cpu_affinity(list: &str, field: &str) -> Result<(), InitFailure> {
    let cpus = parse_cpu_list(list)
        .map_err(|e| InitFailure::new(FailureKind::InvalidArgument, format!("{field}: {e}")))?;
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(cpu)
            .map_err(|e| InitFailure::os(format!("{field}: CPU {cpu}"), e))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| InitFailure::os(field.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(json: &str) -> Scheduler {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn scheduler_attributes() {
        let attr = sched_attr(&scheduler(r#"{"policy": "SCHED_FIFO", "priority": 10}"#)).unwrap();
        assert_eq!((attr.size, attr.policy, attr.priority), (56, 1, 10));
        let attr = sched_attr(&scheduler(
            r#"{"policy": "SCHED_OTHER", "nice": 5, "flags": ["SCHED_RESET_ON_FORK"]}"#,
        ))
        .unwrap();
        assert_eq!((attr.policy, attr.nice, attr.flags), (0, 5, 1));
        let attr = sched_attr(&scheduler(
            r#"{"policy": "SCHED_DEADLINE", "runtime": 10, "deadline": 20, "period": 30}"#,
        ))
        .unwrap();
        assert_eq!((attr.policy, attr.runtime, attr.period), (6, 10, 30));
    }

    #[test]
    fn bad_schedulers_name_the_field() {
        for (json, field) in [
            (r#"{"policy": "SCHED_FIFO"}"#, "process.scheduler.priority"),
            (
                r#"{"policy": "SCHED_OTHER", "priority": 3}"#,
                "process.scheduler.priority",
            ),
            (
                r#"{"policy": "SCHED_OTHER", "nice": 40}"#,
                "process.scheduler.nice",
            ),
            (r#"{"policy": "SCHED_ISO"}"#, "process.scheduler.policy"),
            (
                r#"{"policy": "SCHED_DEADLINE", "runtime": 30, "deadline": 20}"#,
                "process.scheduler",
            ),
            (
                r#"{"policy": "SCHED_BATCH", "runtime": 3}"#,
                "process.scheduler",
            ),
        ] {
            match sched_attr(&scheduler(json)) {
                Err(SpecError::Invalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn io_priorities() {
        let prio: LinuxIOPriority =
            serde_json::from_str(r#"{"class": "IOPRIO_CLASS_BE", "priority": 4}"#).unwrap();
        assert_eq!(io_priority_value(&prio).unwrap(), (2 << 13) | 4);
        let prio: LinuxIOPriority =
            serde_json::from_str(r#"{"class": "IOPRIO_CLASS_IDLE", "priority": 9}"#).unwrap();
        assert!(io_priority_value(&prio).is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), [0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("1").unwrap(), [1]);
        for bad in ["", "a", "3-1", "0-99999", ","] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn personality_flags_are_refused() {
        let p: LinuxPersonality =
            serde_json::from_str(r#"{"domain": "LINUX32", "flags": ["X"]}"#).unwrap();
        assert!(validate_personality(&p).is_err());
        let p: LinuxPersonality = serde_json::from_str(r#"{"domain": "LINUX"}"#).unwrap();
        assert!(validate_personality(&p).is_ok());
    }

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
