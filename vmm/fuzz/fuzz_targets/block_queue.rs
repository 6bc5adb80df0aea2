#![no_main]
//! virtio-blk queue processing on guest-controlled descriptors and buffers.

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use runv_vmm::devices::virtio::block::request::{process_queue, BlockSettings};
use runv_vmm::metrics::DeviceMetrics;

fuzz_target!(|data: &[u8]| {
    let Some((mem, mut q)) = common::setup(data) else {
        return;
    };
    let mut disk = vec![0u8; 64 * 512];
    let settings = BlockSettings {
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        id: [7u8; 20],
    };
    process_queue(&mem, &mut q, &mut disk, &settings, &DeviceMetrics::default());
});
