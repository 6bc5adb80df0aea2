//! The vhost-user-fs frontend against a real virtiofsd: activation shares the memfd guest
//! memory and the queues, and a FUSE_INIT request put in the request queue is answered by
//! virtiofsd directly in guest memory. Skips when virtiofsd is not installed.

#![allow(clippy::cast_possible_truncation)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runv_vmm::device_manager::bus::BusDevice;
use runv_vmm::devices::virtio::mmio::{reg, status, MmioTransport};
use runv_vmm::devices::virtio::vhost_user_fs::VhostUserFs;
use runv_vmm::devices::virtio::{VirtioInterrupt, INT_VRING};
use runv_vmm::metrics::DeviceMetrics;
use runv_vmm::vstate::memory::{create_guest_memory, GuestMemoryMmap};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QSIZE: u16 = 16;
const FUSE_INIT: u32 = 26;

fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn find_virtiofsd() -> Option<PathBuf> {
    [
        "/usr/local/bin/virtiofsd",
        "/usr/libexec/virtiofsd",
        "/usr/lib/qemu/virtiofsd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn setup_queue(t: &mut MmioTransport, index: u32, vq: &MockSplitQueue<GuestMemoryMmap>) {
    wr(t, reg::QUEUE_SEL, index);
    wr(t, reg::QUEUE_NUM, u32::from(QSIZE));
    wr(t, reg::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    wr(t, reg::QUEUE_AVAIL_LOW, vq.avail_addr().0 as u32);
    wr(t, reg::QUEUE_USED_LOW, vq.used_addr().0 as u32);
    wr(t, reg::QUEUE_READY, 1);
}

#[test]
fn fuse_init_round_trip_through_virtiofsd() {
    let Some(virtiofsd) = find_virtiofsd() else {
        return skip("vhost_user_fs: virtiofsd is not installed");
    };
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let shared = dir.as_path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let sock = dir.as_path().join("vfs.sock");
    let _daemon = Daemon(
        Command::new(virtiofsd)
            .arg(format!("--socket-path={}", sock.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--sandbox=none", "--cache=never"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }

    let mem = create_guest_memory(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let metrics = Arc::new(DeviceMetrics::default());
    let fs = VhostUserFs::new(&sock, "runvfs", metrics.clone()).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(
        irq.try_clone().unwrap(),
        metrics.clone(),
    ));
    let mut t = MmioTransport::new(Box::new(fs), mem.clone(), interrupt.clone(), metrics).unwrap();

    let mut tag = [0u8; 8];
    t.read(reg::CONFIG, &mut tag);
    assert_eq!(&tag[..6], b"runvfs");
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(&mut t, reg::STATUS, s);
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    let request = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), QSIZE);
    setup_queue(&mut t, 0, &hiprio);
    setup_queue(&mut t, 1, &request);
    wr(&mut t, reg::STATUS, s | status::DRIVER_OK);
    assert!(t.is_activated(), "activation with virtiofsd failed");

    // FUSE_INIT: fuse_in_header (40 bytes) + fuse_init_in (16 bytes).
    let mut req = Vec::new();
    req.extend_from_slice(&56u32.to_le_bytes());
    req.extend_from_slice(&FUSE_INIT.to_le_bytes());
    req.extend_from_slice(&0x1234u64.to_le_bytes()); // unique
    req.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    req.extend_from_slice(&7u32.to_le_bytes()); // major
    req.extend_from_slice(&31u32.to_le_bytes()); // minor
    req.extend_from_slice(&0u32.to_le_bytes()); // max_readahead
    req.extend_from_slice(&0u32.to_le_bytes()); // flags
    mem.write_slice(&req, GuestAddress(0x10_0000)).unwrap();
    request
        .add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(
                    0x10_0000,
                    req.len() as u32,
                    VRING_DESC_F_NEXT as u16,
                    1,
                )),
                RawDescriptor::from(Descriptor::new(
                    0x11_0000,
                    256,
                    VRING_DESC_F_WRITE as u16,
                    0,
                )),
            ],
            0,
        )
        .unwrap();
    // The guest's QueueNotify write (the ioeventfd, here written directly) kicks virtiofsd.
    wr(&mut t, reg::QUEUE_NOTIFY, 1);

    // virtiofsd signals its call fd; the event loop turns it into a guest interrupt.
    let fd = t.device().backend_fd().unwrap();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "virtiofsd never signalled the call fd");
    t.device_mut().process_backend();
    assert_ne!(interrupt.status() & INT_VRING, 0);
    assert_eq!(request.used().idx().load(), 1);
    let out_len: u32 = mem.read_obj(GuestAddress(0x11_0000)).unwrap();
    let error: i32 = mem.read_obj(GuestAddress(0x11_0004)).unwrap();
    let unique: u64 = mem.read_obj(GuestAddress(0x11_0008)).unwrap();
    assert_eq!((error, unique), (0, 0x1234));
    assert!(out_len > 16);
    let major: u32 = mem.read_obj(GuestAddress(0x11_0010)).unwrap();
    assert_eq!(major, 7);
}
