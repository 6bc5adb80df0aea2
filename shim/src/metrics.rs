//! A container's resource use in containerd's cgroup v2 metrics type, which `ctr task
//! metrics` and the CRI plugin's ContainerStats decode.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, NetworkStat, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use runv_agent_protocol::agent::StatsContainerResponse;

use crate::errors::ShimError;

/// The type URL containerd registers for the cgroup v2 metrics.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The guest's cgroup figures as containerd's v2 metrics.
pub fn to_metrics(stats: &StatsContainerResponse) -> Metrics {
    let stat = |key: &str| stats.memory.stat.get(key).copied().unwrap_or(0);
    let memory = MemoryStat {
        anon: stat("anon"),
        file: stat("file"),
        kernel_stack: stat("kernel_stack"),
        slab: stat("slab"),
        sock: stat("sock"),
        shmem: stat("shmem"),
        file_mapped: stat("file_mapped"),
        file_dirty: stat("file_dirty"),
        file_writeback: stat("file_writeback"),
        anon_thp: stat("anon_thp"),
        inactive_anon: stat("inactive_anon"),
        active_anon: stat("active_anon"),
        inactive_file: stat("inactive_file"),
        active_file: stat("active_file"),
        unevictable: stat("unevictable"),
        slab_reclaimable: stat("slab_reclaimable"),
        slab_unreclaimable: stat("slab_unreclaimable"),
        pgfault: stat("pgfault"),
        pgmajfault: stat("pgmajfault"),
        workingset_refault: stat("workingset_refault"),
        workingset_activate: stat("workingset_activate"),
        workingset_nodereclaim: stat("workingset_nodereclaim"),
        pgrefill: stat("pgrefill"),
        pgscan: stat("pgscan"),
        pgsteal: stat("pgsteal"),
        pgactivate: stat("pgactivate"),
        pgdeactivate: stat("pgdeactivate"),
        pglazyfree: stat("pglazyfree"),
        pglazyfreed: stat("pglazyfreed"),
        thp_fault_alloc: stat("thp_fault_alloc"),
        thp_collapse_alloc: stat("thp_collapse_alloc"),
        usage: stats.memory.usage,
        usage_limit: stats.memory.limit,
        swap_usage: stats.memory.swap_usage,
        swap_limit: stats.memory.swap_limit,
        ..Default::default()
    };
    let cpu = CPUStat {
        usage_usec: stats.cpu.usage_usec,
        user_usec: stats.cpu.user_usec,
        system_usec: stats.cpu.system_usec,
        nr_periods: stats.cpu.nr_periods,
        nr_throttled: stats.cpu.nr_throttled,
        throttled_usec: stats.cpu.throttled_usec,
        ..Default::default()
    };
    let io = IOStat {
        usage: stats
            .io
            .iter()
            .map(|e| IOEntry {
                major: e.major,
                minor: e.minor,
                rbytes: e.rbytes,
                wbytes: e.wbytes,
                rios: e.rios,
                wios: e.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Metrics {
        pids: Some(PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(cpu).into(),
        memory: Some(memory).into(),
        io: Some(io).into(),
        memory_events: Some(MemoryEvents {
            oom: stats.memory.oom,
            oom_kill: stats.memory.oom_kill,
            ..Default::default()
        })
        .into(),
        // The pod's interfaces, as the guest counts them (its network namespace is the
        // pod's, shared by every container).
        network: stats
            .network
            .iter()
            .map(|n| NetworkStat {
                name: n.interface.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_errors: n.rx_errors,
                rx_dropped: n.rx_dropped,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_errors: n.tx_errors,
                tx_dropped: n.tx_dropped,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The metrics packed as the `Any` a StatsResponse carries.
pub fn to_any(stats: &StatsContainerResponse) -> Result<Any, ShimError> {
    let value = to_metrics(stats)
        .write_to_bytes()
        .map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_V2_TYPE_URL.to_string(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runv_agent_protocol::agent::{CpuStats, MemoryStats, NetworkStats, PidsStats};

    #[test]
    fn figures_land_in_the_v2_fields() {
        let mut memory = MemoryStats {
            usage: 8192,
            limit: 65536,
            oom_kill: 1,
            ..Default::default()
        };
        memory.stat.insert("inactive_file".into(), 1024);
        let stats = StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 77,
                ..Default::default()
            })
            .into(),
            memory: Some(memory).into(),
            pids: Some(PidsStats {
                current: 2,
                limit: 10,
                ..Default::default()
            })
            .into(),
            network: vec![NetworkStats {
                interface: "eth0".into(),
                rx_bytes: 1500,
                tx_packets: 3,
                tx_dropped: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let any = to_any(&stats).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE_URL);
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.cpu.usage_usec, 77);
        assert_eq!(back.memory.usage, 8192);
        assert_eq!(back.memory.usage_limit, 65536);
        assert_eq!(back.memory.inactive_file, 1024);
        assert_eq!(back.memory_events.oom_kill, 1);
        assert_eq!((back.pids.current, back.pids.limit), (2, 10));
        let eth0 = &back.network[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(
            (eth0.rx_bytes, eth0.tx_packets, eth0.tx_dropped),
            (1500, 3, 1)
        );
    }
}
