//! The vsock device behind its virtio-mmio transport, driven the way a guest driver would
//! (registers, queues in guest memory), with a host client on the hybrid-vsock socket.
//! No KVM needed: the test plays both the guest driver and the event loop.

#![allow(clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use runv_vmm::device_manager::bus::BusDevice;
use runv_vmm::devices::virtio::mmio::{reg, status, MmioTransport};
use runv_vmm::devices::virtio::vsock::packet::{op, VsockHeader, HDR_LEN, TYPE_STREAM};
use runv_vmm::devices::virtio::vsock::Vsock;
use runv_vmm::devices::virtio::{VirtioInterrupt, INT_VRING};
use runv_vmm::metrics::DeviceMetrics;
use runv_vmm::vstate::memory::{create_guest_memory, GuestMemoryMmap};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn setup_queue(t: &mut MmioTransport, index: u32, vq: &MockSplitQueue<GuestMemoryMmap>) {
    wr(t, reg::QUEUE_SEL, index);
    assert!(rd(t, reg::QUEUE_NUM_MAX) >= u32::from(QSIZE));
    wr(t, reg::QUEUE_NUM, u32::from(QSIZE));
    wr(t, reg::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    wr(
        t,
        reg::QUEUE_DESC_HIGH,
        (vq.desc_table_addr().0 >> 32) as u32,
    );
    wr(t, reg::QUEUE_AVAIL_LOW, vq.avail_addr().0 as u32);
    wr(t, reg::QUEUE_AVAIL_HIGH, (vq.avail_addr().0 >> 32) as u32);
    wr(t, reg::QUEUE_USED_LOW, vq.used_addr().0 as u32);
    wr(t, reg::QUEUE_USED_HIGH, (vq.used_addr().0 >> 32) as u32);
    wr(t, reg::QUEUE_READY, 1);
}

/// Waits until `fd` is readable, then lets the device handle its backend (the event loop's
/// job in runv-vmm).
fn backend_event(t: &mut MmioTransport) {
    let fd = t.device().backend_fd().unwrap();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 2000) };
    assert_eq!(n, 1, "backend fd never became readable");
    t.device_mut().process_backend();
}

fn guest_header(src_port: u32, dst_port: u32, op: u16, len: u32) -> VsockHeader {
    VsockHeader {
        src_cid: 3,
        dst_cid: 2,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

#[test]
fn host_connect_and_data_through_the_transport() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let uds = dir.as_path().join("vsock.sock");
    let mem = create_guest_memory(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let metrics = Arc::new(DeviceMetrics::default());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(
        irq.try_clone().unwrap(),
        metrics.clone(),
    ));
    let dev = Vsock::new(3, &uds, metrics.clone()).unwrap();
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        interrupt.clone(),
        metrics.clone(),
    )
    .unwrap();

    // Driver initialisation.
    assert_eq!(rd(&mut t, reg::DEVICE_ID), 19);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(&mut t, reg::STATUS, s);
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), QSIZE);
    let ev = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), QSIZE);
    setup_queue(&mut t, 0, &rx);
    setup_queue(&mut t, 1, &tx);
    setup_queue(&mut t, 2, &ev);
    wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
    assert!(t.is_activated());
    let mut cid = [0u8; 8];
    t.read(reg::CONFIG, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 3);

    // Guest posts RX buffers.
    let rx_bufs: Vec<RawDescriptor> = (0..8u64)
        .map(|i| {
            RawDescriptor::from(Descriptor::new(
                0x10_0000 + i * 0x1000,
                0x1000,
                VRING_DESC_F_WRITE as u16,
                0,
            ))
        })
        .collect();
    rx.add_desc_chains(&rx_bufs, 0).unwrap();
    t.notify_queue(0);

    // Host connects: the guest receives a REQUEST for port 1024.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    backend_event(&mut t);
    assert_eq!(rx.used().idx().load(), 1);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
    let req = VsockHeader::decode(&raw);
    assert_eq!(
        (req.op, req.dst_port, req.src_cid, req.dst_cid),
        (op::REQUEST, 1024, 2, 3)
    );
    assert_ne!(interrupt.status() & INT_VRING, 0);
    assert!(irq.read().unwrap() >= 1);

    // Guest accepts: RESPONSE on TX; the host gets "OK <port>".
    let resp = guest_header(1024, req.src_port, op::RESPONSE, 0);
    mem.write_slice(&resp.encode(), GuestAddress(0x20_0000))
        .unwrap();
    tx.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            0x20_0000,
            HDR_LEN as u32,
            0,
            0,
        ))],
        0,
    )
    .unwrap();
    t.notify_queue(1);
    let mut reader = BufReader::new(host.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {}\n", req.src_port));

    // Host -> guest data.
    host.write_all(b"ping").unwrap();
    backend_event(&mut t);
    assert_eq!(rx.used().idx().load(), 2);
    mem.read_slice(&mut raw, GuestAddress(0x10_1000)).unwrap();
    let rw = VsockHeader::decode(&raw);
    assert_eq!((rw.op, rw.len), (op::RW, 4));
    let mut payload = [0u8; 4];
    mem.read_slice(&mut payload, GuestAddress(0x10_1000 + HDR_LEN as u64))
        .unwrap();
    assert_eq!(&payload, b"ping");

    // Guest -> host data: header and payload in two descriptors.
    let pkt = guest_header(1024, req.src_port, op::RW, 4);
    mem.write_slice(&pkt.encode(), GuestAddress(0x21_0000))
        .unwrap();
    mem.write_slice(b"pong", GuestAddress(0x22_0000)).unwrap();
    tx.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(
                0x21_0000,
                HDR_LEN as u32,
                virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
                2,
            )),
            RawDescriptor::from(Descriptor::new(0x22_0000, 4, 0, 0)),
        ],
        1,
    )
    .unwrap();
    t.notify_queue(1);
    let mut got = [0u8; 4];
    reader.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(tx.used().idx().load(), 2);
    assert!(metrics.requests.get() >= 4);
}
