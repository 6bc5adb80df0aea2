//! Counters served by the API socket's `metrics` request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// vCPU exits by kind, summed over all vCPUs.
#[derive(Debug, Default)]
pub struct ExitMetrics {
    /// Port reads.
    pub io_in: Counter,
    /// Port writes.
    pub io_out: Counter,
    /// MMIO reads.
    pub mmio_read: Counter,
    /// MMIO writes.
    pub mmio_write: Counter,
    /// HLT exits.
    pub hlt: Counter,
    /// Triple faults.
    pub shutdown: Counter,
    /// KVM internal errors.
    pub internal_error: Counter,
    /// Failed VM entries.
    pub fail_entry: Counter,
    /// System events (PSCI on aarch64).
    pub system_event: Counter,
    /// KVM_RUN interrupted by a signal.
    pub interrupted: Counter,
    /// Accesses to addresses with no device.
    pub unhandled: Counter,
    /// Any other exit.
    pub other: Counter,
}

impl ExitMetrics {
    fn to_json(&self) -> Value {
        json!({
            "io_in": self.io_in.get(),
            "io_out": self.io_out.get(),
            "mmio_read": self.mmio_read.get(),
            "mmio_write": self.mmio_write.get(),
            "hlt": self.hlt.get(),
            "shutdown": self.shutdown.get(),
            "internal_error": self.internal_error.get(),
            "fail_entry": self.fail_entry.get(),
            "system_event": self.system_event.get(),
            "interrupted": self.interrupted.get(),
            "unhandled": self.unhandled.get(),
            "other": self.other.get(),
        })
    }
}

/// Counters of one device.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Queue notifications (ioeventfd) handled.
    pub notifications: Counter,
    /// Interrupts raised to the guest.
    pub interrupts: Counter,
    /// Descriptor chains completed.
    pub requests: Counter,
    /// Bytes from the guest (tx, disk writes, serial output).
    pub bytes_from_guest: Counter,
    /// Bytes to the guest (rx, disk reads, serial input).
    pub bytes_to_guest: Counter,
    /// Malformed requests or I/O errors.
    pub errors: Counter,
}

impl DeviceMetrics {
    fn to_json(&self) -> Value {
        json!({
            "notifications": self.notifications.get(),
            "interrupts": self.interrupts.get(),
            "requests": self.requests.get(),
            "bytes_from_guest": self.bytes_from_guest.get(),
            "bytes_to_guest": self.bytes_to_guest.get(),
            "errors": self.errors.get(),
        })
    }
}

/// All counters of one VMM.
#[derive(Debug, Default)]
pub struct VmmMetrics {
    /// vCPU exits.
    pub exits: ExitMetrics,
    devices: Mutex<BTreeMap<String, Arc<DeviceMetrics>>>,
}

impl VmmMetrics {
    /// Registers (or returns) the counters of device `name`.
    pub fn device(&self, name: &str) -> Arc<DeviceMetrics> {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(devices.entry(name.to_string()).or_default())
    }

    /// Everything as JSON.
    pub fn to_json(&self) -> Value {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let devs: serde_json::Map<String, Value> = devices
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        json!({ "exits": self.exits.to_json(), "devices": devs })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let m = VmmMetrics::default();
        m.exits.io_out.add(3);
        m.device("block0").requests.inc();
        let v = m.to_json();
        assert_eq!(v["exits"]["io_out"], 3);
        assert_eq!(v["devices"]["block0"]["requests"], 1);
    }
}
