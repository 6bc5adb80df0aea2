//! virtio-net TX to a real tap and RX from it (needs root and /dev/net/tun; skips otherwise).

#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runv_vmm::devices::virtio::net::queue::{deliver_rx, process_tx, RxOutcome, VNET_HDR_LEN};
use runv_vmm::devices::virtio::net::tap::Tap;
use runv_vmm::metrics::DeviceMetrics;
use runv_vmm::vstate::memory::GuestMemoryMmap;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn stat(name: &str, what: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{what}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn tx_frames_reach_the_tap_and_rx_frames_reach_the_guest() {
    let name = "runvtest0";
    let mut tap = match Tap::open(name) {
        Ok(t) => t,
        Err(e) => return skip(&format!("tap_net: cannot open a tap here: {e}")),
    };
    let up = Command::new("ip")
        .args(["link", "set", name, "up"])
        .status();
    if !up.map(|s| s.success()).unwrap_or(false) {
        return skip("tap_net: cannot bring the tap up with `ip link`");
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let metrics = Arc::new(DeviceMetrics::default());

    // TX: a broadcast Ethernet frame after a zeroed virtio-net header.
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0x72, 0x75, 0x6e, 0x76, 0x01]);
    frame.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    frame.extend_from_slice(&[0x42; 46]);
    mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    txq.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(
                0x10_0000,
                VNET_HDR_LEN as u32,
                VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(Descriptor::new(
                0x10_0000 + VNET_HDR_LEN as u64,
                (frame.len() - VNET_HDR_LEN) as u32,
                0,
                0,
            )),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = txq.create_queue().unwrap();
    let before = stat(name, "rx_packets");
    process_tx(&mem, &mut q, &mut tap, &mut Vec::new(), &metrics);
    assert_eq!(metrics.errors.get(), 0);
    assert_eq!(
        stat(name, "rx_packets"),
        before + 1,
        "frame did not reach the tap"
    );

    // RX: whatever the host stack sends out of the tap (IPv6 solicitations once it is up),
    // if anything comes within 3 s.
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    rxq.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            0x20_0000,
            2048,
            VRING_DESC_F_WRITE as u16,
            0,
        ))],
        0,
    )
    .unwrap();
    let mut rq: Queue = rxq.create_queue().unwrap();
    let mut buf = vec![0u8; 65_562];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if let Ok(n) = tap.recv(&mut buf) {
            assert_eq!(
                deliver_rx(&mem, &mut rq, &buf[..n], &metrics),
                RxOutcome::Delivered
            );
            assert_eq!(rxq.used().idx().load(), 1);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    skip("tap_net: the host sent nothing out of the tap in 3 s; RX path not exercised");
}
