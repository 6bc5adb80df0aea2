//! `linux.resources` as cgroup v2 file writes, and the fields cgroup v2 cannot honour.
//!
//! Every conversion is pure, so create and UpdateContainer validate the whole request
//! before the first write. Fields that v2 has no file for are refused when they ask for
//! something other than the default, naming the field, rather than silently ignored.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources, LinuxThrottleDevice};

use super::cgroup::{cpu_max, cpu_weight, memory_max, pids_max, swap_max};
use super::device_rules::{Policy, MAX_MAJOR, MAX_MINOR};

/// The default `vm.swappiness`; a spec asking for it asks for nothing cgroup v2 lacks.
const DEFAULT_SWAPPINESS: u64 = 60;

/// Files the agent manages itself and a `unified` entry must not write.
const MANAGED_FILES: [&str; 6] = [
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.kill",
    "cgroup.freeze",
    "cgroup.type",
    "cgroup.subtree_control",
];

/// A field of the spec that the agent refuses, named with its path in the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One write to a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The spec field it implements, for errors.
    pub field: String,
    pub file: String,
    pub value: String,
    /// Written instead when `file` does not exist (io.bfq.weight or io.weight).
    pub alternative: Option<(String, String)>,
    /// A missing file is an error even where missing controllers are tolerated
    /// (`unified` entries name the file themselves).
    pub required: bool,
    /// Written only where the kernel has the file (hugetlb reservation limits).
    pub optional: bool,
}

impl Limit {
    fn new(field: impl Into<String>, file: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            file: file.into(),
            value: value.into(),
            alternative: None,
            required: false,
            optional: false,
        }
    }
}

/// Checks `resources` (limits and device rules) without touching any cgroup.
pub fn validate(resources: &LinuxResources) -> Result<(), FieldError> {
    limits(resources)?;
    if let Some(rules) = resources.devices() {
        Policy::from_spec(rules)?;
    }
    Ok(())
}

/// The cgroup v2 writes that implement `resources`, in order; `unified` entries come last
/// so they override the typed fields.
pub fn limits(resources: &LinuxResources) -> Result<Vec<Limit>, FieldError> {
    let mut out = Vec::new();
    if let Some(memory) = resources.memory() {
        memory_limits(memory, &mut out)?;
    }
    if let Some(pids) = resources.pids() {
        out.push(Limit::new(
            "linux.resources.pids.limit",
            "pids.max",
            pids_max(pids.limit()),
        ));
    }
    if let Some(cpu) = resources.cpu() {
        cpu_limits(cpu, &mut out)?;
    }
    if let Some(block_io) = resources.block_io() {
        io_limits(block_io, &mut out)?;
    }
    for (i, page) in resources.hugepage_limits().iter().flatten().enumerate() {
        let field = format!("linux.resources.hugepageLimits[{i}]");
        let size = page.page_size();
        if !valid_page_size(size) {
            return Err(FieldError::new(
                format!("{field}.pageSize"),
                format!("{size:?} is not a page size like 2MB, 1GB or 64KB"),
            ));
        }
        let value = if page.limit() < 0 {
            "max".to_string()
        } else {
            page.limit().to_string()
        };
        out.push(Limit::new(
            format!("{field}.limit"),
            format!("hugetlb.{size}.max"),
            &value,
        ));
        // Reservations (kernels since 5.7) are held to the same limit, as runc does, so
        // a mapping cannot reserve pages the limit would refuse at fault time.
        out.push(Limit {
            optional: true,
            ..Limit::new(
                format!("{field}.limit"),
                format!("hugetlb.{size}.rsvd.max"),
                value,
            )
        });
    }
    if let Some(network) = resources.network() {
        if network.class_id().is_some() {
            return Err(unsupported(
                "linux.resources.network.classID",
                "cgroup v2 has no net_cls controller",
            ));
        }
        if network.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(unsupported(
                "linux.resources.network.priorities",
                "cgroup v2 has no net_prio controller",
            ));
        }
    }
    if resources.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported(
            "linux.resources.rdma",
            "the guest kernel has no rdma controller",
        ));
    }
    let unified: BTreeMap<_, _> = resources.unified().iter().flatten().collect();
    for (key, value) in unified {
        check_unified_key(key)?;
        out.push(Limit {
            required: true,
            ..Limit::new(format!("linux.resources.unified[{key:?}]"), key, value)
        });
    }
    Ok(out)
}

fn unsupported(field: &str, reason: &str) -> FieldError {
    FieldError::new(field, format!("not supported: {reason}"))
}

fn memory_limits(memory: &LinuxMemory, out: &mut Vec<Limit>) -> Result<(), FieldError> {
    const FIELD: &str = "linux.resources.memory";
    if let Some(max) = memory_max(memory.limit()) {
        out.push(Limit::new(format!("{FIELD}.limit"), "memory.max", max));
    }
    if let Some(low) = memory_low(memory.reservation()) {
        out.push(Limit::new(
            format!("{FIELD}.reservation"),
            "memory.low",
            low,
        ));
    }
    if let Some(swap) = swap_max(memory.swap(), memory.limit())? {
        out.push(Limit::new(format!("{FIELD}.swap"), "memory.swap.max", swap));
    }
    for (name, value) in [
        ("kernel", memory.kernel()),
        ("kernelTCP", memory.kernel_tcp()),
    ] {
        if let Some(v) = value.filter(|v| *v > 0) {
            return Err(FieldError::new(
                format!("{FIELD}.{name}"),
                format!(
                    "{v}: cgroup v2 has no separate kernel memory limit \
                     (kernel memory counts toward memory.limit)"
                ),
            ));
        }
    }
    if let Some(s) = memory.swappiness().filter(|s| *s != DEFAULT_SWAPPINESS) {
        return Err(FieldError::new(
            format!("{FIELD}.swappiness"),
            format!("{s}: cgroup v2 has no per-cgroup swappiness (only {DEFAULT_SWAPPINESS}, the default, can be honoured)"),
        ));
    }
    if memory.disable_oom_killer() == Some(true) {
        return Err(FieldError::new(
            format!("{FIELD}.disableOOMKiller"),
            "cgroup v2 cannot disable the OOM killer",
        ));
    }
    Ok(())
}

/// `memory.low` from the OCI reservation: negative is "max", like a limit.
pub fn memory_low(reservation: Option<i64>) -> Option<String> {
    memory_max(reservation)
}

fn cpu_limits(cpu: &LinuxCpu, out: &mut Vec<Limit>) -> Result<(), FieldError> {
    const FIELD: &str = "linux.resources.cpu";
    if let Some(max) = cpu_max(cpu.quota(), cpu.period()) {
        out.push(Limit::new(format!("{FIELD}.quota"), "cpu.max", max));
    }
    if let Some(burst) = cpu.burst() {
        out.push(Limit::new(
            format!("{FIELD}.burst"),
            "cpu.max.burst",
            burst.to_string(),
        ));
    }
    if let Some(weight) = cpu_weight(cpu.shares()) {
        out.push(Limit::new(
            format!("{FIELD}.shares"),
            "cpu.weight",
            weight.to_string(),
        ));
    }
    if let Some(idle) = cpu.idle() {
        if !(0..=1).contains(&idle) {
            return Err(FieldError::new(
                format!("{FIELD}.idle"),
                format!("{idle} is not 0 or 1"),
            ));
        }
        out.push(Limit::new(
            format!("{FIELD}.idle"),
            "cpu.idle",
            idle.to_string(),
        ));
    }
    if let Some(runtime) = cpu.realtime_runtime().filter(|r| *r != 0) {
        return Err(FieldError::new(
            format!("{FIELD}.realtimeRuntime"),
            format!("{runtime}: cgroup v2 has no real-time CPU bandwidth"),
        ));
    }
    if let Some(period) = cpu.realtime_period().filter(|p| *p != 0) {
        return Err(FieldError::new(
            format!("{FIELD}.realtimePeriod"),
            format!("{period}: cgroup v2 has no real-time CPU bandwidth"),
        ));
    }
    for (name, value, file) in [
        ("cpus", cpu.cpus(), "cpuset.cpus"),
        ("mems", cpu.mems(), "cpuset.mems"),
    ] {
        let Some(list) = value.as_deref().filter(|l| !l.is_empty()) else {
            continue;
        };
        if !valid_cpu_list(list) {
            return Err(FieldError::new(
                format!("{FIELD}.{name}"),
                format!("{list:?} is not a list like \"0-3,6\""),
            ));
        }
        out.push(Limit::new(format!("{FIELD}.{name}"), file, list));
    }
    Ok(())
}

/// "0", "0-3", "0-3,6,8-9": ascending ranges of decimal numbers.
pub fn valid_cpu_list(list: &str) -> bool {
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    list.split(',').all(|range| match range.split_once('-') {
        Some((lo, hi)) => matches!((number(lo), number(hi)), (Some(lo), Some(hi)) if lo <= hi),
        None => number(range).is_some(),
    })
}

/// "2MB", "1GB", "64KB": the names the kernel gives hugetlb.<size>.* files.
pub fn valid_page_size(size: &str) -> bool {
    let Some(number) = size
        .strip_suffix("KB")
        .or_else(|| size.strip_suffix("MB"))
        .or_else(|| size.strip_suffix("GB"))
    else {
        return false;
    };
    !number.is_empty() && !number.starts_with('0') && number.bytes().all(|b| b.is_ascii_digit())
}

/// A `unified` key must name one file of the cgroup directory, and not one the agent
/// manages itself.
fn check_unified_key(key: &str) -> Result<(), FieldError> {
    let field = || format!("linux.resources.unified[{key:?}]");
    if key.is_empty() || key.contains('/') || key == "." || key == ".." || !key.contains('.') {
        return Err(FieldError::new(
            field(),
            "must be a cgroup file name such as \"memory.high\"",
        ));
    }
    if MANAGED_FILES.contains(&key) {
        return Err(FieldError::new(field(), "is managed by the agent"));
    }
    Ok(())
}

fn io_limits(io: &LinuxBlockIo, out: &mut Vec<Limit>) -> Result<(), FieldError> {
    const FIELD: &str = "linux.resources.blockIO";
    if let Some(weight) = io.weight().filter(|w| *w != 0) {
        let field = format!("{FIELD}.weight");
        out.push(weight_limit(field, "", weight)?);
    }
    if io.leaf_weight().is_some_and(|w| w != 0) {
        return Err(unsupported(
            &format!("{FIELD}.leafWeight"),
            "cgroup v2 has no leaf weight",
        ));
    }
    for (i, device) in io.weight_device().iter().flatten().enumerate() {
        let field = format!("{FIELD}.weightDevice[{i}]");
        let dev = device_number(&field, device.major(), device.minor())?;
        if device.leaf_weight().is_some_and(|w| w != 0) {
            return Err(unsupported(
                &format!("{field}.leafWeight"),
                "cgroup v2 has no leaf weight",
            ));
        }
        if let Some(weight) = device.weight().filter(|w| *w != 0) {
            out.push(weight_limit(format!("{field}.weight"), &dev, weight)?);
        }
    }
    // io.max takes one line per device with any of its four limits.
    let mut max: Vec<(String, String, Vec<String>)> = Vec::new();
    for (name, key, list) in [
        (
            "throttleReadBpsDevice",
            "rbps",
            io.throttle_read_bps_device(),
        ),
        (
            "throttleWriteBpsDevice",
            "wbps",
            io.throttle_write_bps_device(),
        ),
        (
            "throttleReadIOPSDevice",
            "riops",
            io.throttle_read_iops_device(),
        ),
        (
            "throttleWriteIOPSDevice",
            "wiops",
            io.throttle_write_iops_device(),
        ),
    ] {
        for (i, device) in list.iter().flatten().enumerate() {
            let field = format!("{FIELD}.{name}[{i}]");
            let dev = device_number(&field, device.major(), device.minor())?;
            let setting = format!("{key}={}", throttle_rate(device));
            match max.iter_mut().find(|(d, _, _)| *d == dev) {
                Some((_, _, settings)) => settings.push(setting),
                None => max.push((dev, field, vec![setting])),
            }
        }
    }
    for (dev, field, settings) in max {
        out.push(Limit::new(
            field,
            "io.max",
            format!("{dev} {}", settings.join(" ")),
        ));
    }
    Ok(())
}

/// Zero removes a limit, as it does for cgroup v1's throttle files.
fn throttle_rate(device: &LinuxThrottleDevice) -> String {
    match device.rate() {
        0 => "max".into(),
        rate => rate.to_string(),
    }
}

fn device_number(field: &str, major: i64, minor: i64) -> Result<String, FieldError> {
    if !(0..=MAX_MAJOR).contains(&major) {
        return Err(FieldError::new(
            format!("{field}.major"),
            format!("{major} is out of range (0..={MAX_MAJOR})"),
        ));
    }
    if !(0..=MAX_MINOR).contains(&minor) {
        return Err(FieldError::new(
            format!("{field}.minor"),
            format!("{minor} is out of range (0..={MAX_MINOR})"),
        ));
    }
    Ok(format!("{major}:{minor}"))
}

/// A weight (cgroup v1 scale, 10..=1000) for `dev` ("" for the default): io.bfq.weight
/// takes it as it is; where BFQ is absent, io.weight (1..=10000) takes it scaled.
fn weight_limit(field: String, dev: &str, weight: u16) -> Result<Limit, FieldError> {
    if !(10..=1000).contains(&weight) {
        return Err(FieldError::new(
            field,
            format!("{weight} is out of range (10..=1000)"),
        ));
    }
    let line = |w: u64| {
        if dev.is_empty() {
            w.to_string()
        } else {
            format!("{dev} {w}")
        }
    };
    Ok(Limit {
        alternative: Some(("io.weight".into(), line(io_weight(weight)))),
        ..Limit::new(field, "io.bfq.weight", line(u64::from(weight)))
    })
}

/// io.weight from a cgroup v1 blkio weight, mapped linearly: 10 → 1, 1000 → 10000.
pub fn io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(10, 1000));
    1 + (weight - 10) * 9999 / 990
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn writes(json: &str) -> Vec<(String, String)> {
        limits(&resources(json))
            .unwrap()
            .into_iter()
            .map(|l| (l.file, l.value))
            .collect()
    }

    fn error_field(json: &str) -> String {
        limits(&resources(json)).unwrap_err().field
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn memory_pids_cpu() {
        assert_eq!(
            writes(
                r#"{"memory": {"limit": 1048576, "reservation": 524288, "swap": 2097152},
                    "pids": {"limit": 10},
                    "cpu": {"shares": 1024, "quota": 50000, "burst": 1000, "idle": 1,
                            "cpus": "0-1,3", "mems": "0"}}"#
            ),
            pairs(&[
                ("memory.max", "1048576"),
                ("memory.low", "524288"),
                ("memory.swap.max", "1048576"),
                ("pids.max", "10"),
                ("cpu.max", "50000 100000"),
                ("cpu.max.burst", "1000"),
                ("cpu.weight", "39"),
                ("cpu.idle", "1"),
                ("cpuset.cpus", "0-1,3"),
                ("cpuset.mems", "0"),
            ])
        );
        assert_eq!(
            writes(r#"{"memory": {"reservation": -1}}"#),
            pairs(&[("memory.low", "max")])
        );
    }

    #[test]
    fn defaults_that_v2_lacks_are_accepted() {
        assert_eq!(
            writes(
                r#"{"memory": {"swappiness": 60, "kernel": -1, "kernelTCP": 0,
                               "disableOOMKiller": false},
                    "cpu": {"realtimeRuntime": 0, "realtimePeriod": 0, "cpus": ""},
                    "blockIO": {"weight": 0, "leafWeight": 0}}"#
            ),
            Vec::new()
        );
    }

    #[test]
    fn what_v2_cannot_honour_is_refused_by_name() {
        let cases = [
            (
                r#"{"memory": {"swappiness": 0}}"#,
                "linux.resources.memory.swappiness",
            ),
            (
                r#"{"memory": {"kernel": 1048576}}"#,
                "linux.resources.memory.kernel",
            ),
            (
                r#"{"memory": {"kernelTCP": 1048576}}"#,
                "linux.resources.memory.kernelTCP",
            ),
            (
                r#"{"memory": {"disableOOMKiller": true}}"#,
                "linux.resources.memory.disableOOMKiller",
            ),
            (r#"{"memory": {"swap": 5}}"#, "linux.resources.memory.swap"),
            (
                r#"{"cpu": {"realtimeRuntime": 950000}}"#,
                "linux.resources.cpu.realtimeRuntime",
            ),
            (
                r#"{"cpu": {"realtimePeriod": 1000000}}"#,
                "linux.resources.cpu.realtimePeriod",
            ),
            (r#"{"cpu": {"idle": 2}}"#, "linux.resources.cpu.idle"),
            (r#"{"cpu": {"cpus": "0-"}}"#, "linux.resources.cpu.cpus"),
            (r#"{"cpu": {"mems": "1,a"}}"#, "linux.resources.cpu.mems"),
            (
                r#"{"blockIO": {"weight": 5}}"#,
                "linux.resources.blockIO.weight",
            ),
            (
                r#"{"blockIO": {"leafWeight": 500}}"#,
                "linux.resources.blockIO.leafWeight",
            ),
            (
                r#"{"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "leafWeight": 10}]}}"#,
                "linux.resources.blockIO.weightDevice[0].leafWeight",
            ),
            (
                r#"{"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1},
                                                       {"major": -8, "minor": 0, "rate": 1}]}}"#,
                "linux.resources.blockIO.throttleReadBpsDevice[1].major",
            ),
            (
                r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 0}, {"pageSize": "2M", "limit": 0}]}"#,
                "linux.resources.hugepageLimits[1].pageSize",
            ),
            (
                r#"{"network": {"classID": 1}}"#,
                "linux.resources.network.classID",
            ),
            (
                r#"{"network": {"priorities": [{"name": "eth0", "priority": 1}]}}"#,
                "linux.resources.network.priorities",
            ),
            (
                r#"{"unified": {"../memory.max": "1"}}"#,
                r#"linux.resources.unified["../memory.max"]"#,
            ),
            (
                r#"{"unified": {"cgroup.procs": "1"}}"#,
                r#"linux.resources.unified["cgroup.procs"]"#,
            ),
            (
                r#"{"unified": {"..": "1"}}"#,
                r#"linux.resources.unified[".."]"#,
            ),
            (r#"{"devices": [{"allow": true, "type": "x"}]}"#, "?"),
        ];
        for (json, field) in cases {
            if field == "?" {
                // An unknown device type is already refused by the JSON parser.
                assert!(serde_json::from_str::<LinuxResources>(json).is_err());
                continue;
            }
            assert_eq!(error_field(json), field, "{json}");
        }
        let err = validate(&resources(
            r#"{"devices": [{"allow": false}, {"allow": true, "type": "c", "access": "rwx"}]}"#,
        ))
        .unwrap_err();
        assert_eq!(err.field, "linux.resources.devices[1].access");
    }

    #[test]
    fn block_io() {
        let limits = limits(&resources(
            r#"{"blockIO": {"weight": 500,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 1000}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100},
                                            {"major": 254, "minor": 1, "rate": 0}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2048}]}}"#,
        ))
        .unwrap();
        let got: Vec<_> = limits
            .iter()
            .map(|l| {
                (
                    l.file.as_str(),
                    l.value.as_str(),
                    l.alternative
                        .as_ref()
                        .map(|(f, v)| (f.as_str(), v.as_str())),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("io.bfq.weight", "500", Some(("io.weight", "4950"))),
                (
                    "io.bfq.weight",
                    "8:0 1000",
                    Some(("io.weight", "8:0 10000"))
                ),
                ("io.max", "8:0 rbps=1048576 wbps=2048 wiops=100", None),
                ("io.max", "254:1 wiops=max", None),
            ]
        );
        assert_eq!(
            limits[2].field,
            "linux.resources.blockIO.throttleReadBpsDevice[0]"
        );
    }

    #[test]
    fn io_weight_scale() {
        assert_eq!(io_weight(10), 1);
        assert_eq!(io_weight(100), 910);
        assert_eq!(io_weight(1000), 10_000);
    }

    #[test]
    fn hugepages_and_unified() {
        let limits = limits(&resources(
            r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304},
                                   {"pageSize": "1GB", "limit": -1}],
                "memory": {"limit": 1000},
                "unified": {"memory.max": "2000", "memory.high": "1500"}}"#,
        ))
        .unwrap();
        let got: Vec<_> = limits
            .iter()
            .map(|l| (l.file.as_str(), l.value.as_str(), l.required, l.optional))
            .collect();
        assert_eq!(
            got,
            vec![
                ("memory.max", "1000", false, false),
                ("hugetlb.2MB.max", "4194304", false, false),
                ("hugetlb.2MB.rsvd.max", "4194304", false, true),
                ("hugetlb.1GB.max", "max", false, false),
                ("hugetlb.1GB.rsvd.max", "max", false, true),
                ("memory.high", "1500", true, false),
                ("memory.max", "2000", true, false),
            ]
        );
    }

    #[test]
    fn list_and_size_syntax() {
        for good in ["0", "0-3", "0-3,6,8-9", "12"] {
            assert!(valid_cpu_list(good), "{good}");
        }
        for bad in ["", "-1", "3-1", "0,", "a", "0 1"] {
            assert!(!valid_cpu_list(bad), "{bad}");
        }
        for good in ["2MB", "1GB", "64KB", "512MB"] {
            assert!(valid_page_size(good), "{good}");
        }
        for bad in ["2M", "MB", "02MB", "2mb", "1.5GB"] {
            assert!(!valid_page_size(bad), "{bad}");
        }
    }
}
