#![no_main]
//! vsock TX parsing into the real hybrid-vsock muxer, and RX filling from it.

#[path = "common.rs"]
mod common;

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use runv_vmm::devices::virtio::vsock::muxer::VsockMuxer;
use runv_vmm::devices::virtio::vsock::packet::MAX_PAYLOAD;
use runv_vmm::devices::virtio::vsock::queue::{process_rx, process_tx};
use runv_vmm::metrics::DeviceMetrics;

fn muxer() -> &'static Mutex<VsockMuxer> {
    static M: OnceLock<Mutex<VsockMuxer>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("runv-vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        Mutex::new(VsockMuxer::new(&dir.join("v.sock"), 3).expect("muxer"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((mem, mut q)) = common::setup(data) else {
        return;
    };
    let metrics = DeviceMetrics::default();
    let mut m = muxer().lock().unwrap_or_else(|e| e.into_inner());
    if data.first().is_some_and(|b| b & 1 == 0) {
        process_tx(&mem, &mut q, &mut *m, &mut Vec::new(), &metrics);
    } else {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        process_rx(&mem, &mut q, &mut *m, &mut buf, &metrics);
    }
});
