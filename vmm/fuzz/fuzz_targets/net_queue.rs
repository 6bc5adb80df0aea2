#![no_main]
//! virtio-net TX processing and RX delivery on guest-controlled descriptors.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use runv_vmm::devices::virtio::net::queue::{deliver_rx, process_tx};
use runv_vmm::metrics::DeviceMetrics;

fuzz_target!(|data: &[u8]| {
    let Some((mem, mut q)) = common::setup(data) else {
        return;
    };
    let metrics = DeviceMetrics::default();
    if data.first().is_some_and(|b| b & 1 == 0) {
        let mut sent: Vec<Vec<u8>> = Vec::new();
        process_tx(&mem, &mut q, &mut sent, &mut Vec::new(), &metrics);
    } else {
        let frame = vec![0x5au8; 60 + usize::from(data.get(1).copied().unwrap_or(0)) * 8];
        for _ in 0..4 {
            deliver_rx(&mem, &mut q, &frame, &metrics);
        }
    }
});
