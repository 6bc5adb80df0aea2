//! Figure 4: vsock throughput and latency between a host client on the hybrid-vsock Unix
//! socket and runv-vmm's virtio-vsock device, in process (see `guest.rs`). Each run makes a
//! fresh device and connection, then measures host → guest and guest → host streaming and
//! 64-byte round trips (the guest echoes).

mod echo_payload;
mod guest;
mod ring;
mod vm;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::child::ScratchDir;
use crate::report::Report;
use guest::{Guest, GUEST_PORT, TX_DATA_MAX};

/// Bytes streamed in each direction per run.
const STREAM_BYTES: usize = 32 << 20;
/// Round trips per run; the run's figure is their median.
const PINGS: usize = 500;
const PING_LEN: usize = 64;
const DEADLINE: Duration = Duration::from_secs(60);

const SECTION: &str = "4. vsock host ↔ device (in process)";

/// Figure 4 through a real runv-vmm VM running the echo payload.
pub fn run_vm(runs: usize, runv_vmm: &std::path::Path, report: &mut Report) -> Result<()> {
    const SECTION_VM: &str = "4. vsock host ↔ guest payload (runv-vmm VM)";
    const ECHO_BYTES: usize = 8 << 20;
    let (mut med, mut p99, mut echo) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let r = vm::run_once(runv_vmm, PINGS, PING_LEN, ECHO_BYTES)?;
        med.push(r.rtt_median_us);
        p99.push(r.rtt_p99_us);
        echo.push(r.echo_mib_s);
    }
    let rt = format!("{PING_LEN} B round trip host → guest → host, median of {PINGS}");
    report.row(SECTION_VM, rt, "runv-vmm", "us", &med);
    let rt99 = format!("{PING_LEN} B round trip, 99th percentile of {PINGS}");
    report.row(SECTION_VM, rt99, "runv-vmm", "us", &p99);
    report.row(
        SECTION_VM,
        "stream echoed by the guest (both ways at once)",
        "runv-vmm",
        "MiB/s",
        &echo,
    );
    report.note(
        SECTION_VM,
        format!(
            "a PVH payload with a minimal virtio-vsock driver in a runv-vmm VM (128 MiB, 1 \
             vCPU) accepts `CONNECT {GUEST_PORT}` and echoes every RW packet (one packet in \
             flight, 4 KiB RX buffers, rings polled, no interrupts); a host client on the \
             hybrid-vsock socket times round trips and an {} MiB stream echoed back (counted \
             once). Includes KVM exits for the queue notifications, the ioeventfds and \
             runv-vmm's event loop; no guest kernel. QEMU is not compared: runv runs vsock \
             there through vhost-user-vsock with an external daemon.",
            ECHO_BYTES >> 20
        ),
    );
    Ok(())
}

pub fn run(runs: usize, report: &mut Report) -> Result<()> {
    let (mut to_guest, mut to_host, mut rtt, mut rtt_p99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let dir = ScratchDir::new("vsock")?;
        let uds = dir.path().join("v.sock");
        let mut g = Guest::new(&uds)?;
        let host = connect(&mut g, &uds)?;
        to_guest.push(host_to_guest(&mut g, &host)?);
        to_host.push(guest_to_host(&mut g, &host)?);
        let (median, p99) = round_trips(&mut g, &host)?;
        rtt.push(median);
        rtt_p99.push(p99);
    }
    report.row(
        SECTION,
        "host → guest stream throughput",
        "runv-vmm",
        "MiB/s",
        &to_guest,
    );
    report.row(
        SECTION,
        "guest → host stream throughput",
        "runv-vmm",
        "MiB/s",
        &to_host,
    );
    let rt = format!("{PING_LEN} B round trip host → guest → host, median of {PINGS}");
    report.row(SECTION, rt, "runv-vmm", "us", &rtt);
    let rt99 = format!("{PING_LEN} B round trip, 99th percentile of {PINGS}");
    report.row(SECTION, rt99, "runv-vmm", "us", &rtt_p99);
    report.extra(
        "vsock",
        json!({"stream_bytes": STREAM_BYTES, "pings": PINGS, "ping_len": PING_LEN}),
    );
    report.note(
        SECTION,
        format!(
            "runv-vmm's own virtio-vsock device (queue processing and hybrid-vsock muxer, as \
             built into runv-vmm) behind its virtio-mmio transport on real guest memory, with \
             the guest driver and the event loop played by the bench thread (256-entry queues, \
             4 KiB RX buffers as Linux posts them, 64 KiB TX packets, credit updates every \
             64 KiB) and a host client thread on the Unix socket doing `CONNECT {GUEST_PORT}`. \
             No VM: no KVM exits, ioeventfds or interrupts are in these figures, so they bound \
             what the device and the muxer can do; a guest kernel's stack is not included. \
             QEMU has no in-process vsock to compare with (runv uses vhost-user-vsock there). \
             {} MiB per direction per run.",
            STREAM_BYTES >> 20
        ),
    );
    Ok(())
}

/// `CONNECT` from the host; the guest accepts; the host reads `OK <port>`.
fn connect(g: &mut Guest, uds: &std::path::Path) -> Result<UnixStream> {
    let mut host = UnixStream::connect(uds).context("connect to the vsock socket")?;
    host.set_read_timeout(Some(DEADLINE))?;
    host.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())?;
    let start = Instant::now();
    while !g.connected() {
        if start.elapsed() > DEADLINE {
            bail!("no REQUEST reached the guest");
        }
        g.pump(Duration::from_millis(100), false)?;
    }
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        host.read_exact(&mut b).context("read the OK line")?;
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        bail!("handshake answer {:?}", String::from_utf8_lossy(&line));
    }
    Ok(host)
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// A host thread writes; the guest counts what arrives. Ends when the guest has it all.
fn host_to_guest(g: &mut Guest, host: &UnixStream) -> Result<f64> {
    let mut w = host.try_clone()?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = STREAM_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut got = 0usize;
    while got < STREAM_BYTES {
        if start.elapsed() > DEADLINE {
            bail!("host → guest: {got} of {STREAM_BYTES} bytes after {DEADLINE:?}");
        }
        for p in g.pump(Duration::from_millis(100), false)? {
            got += p.hdr.len as usize;
        }
    }
    let elapsed = start.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .context("host write")?;
    Ok(mib_per_s(STREAM_BYTES, elapsed))
}

/// The guest sends as its credit allows; ends when a host thread has read it all.
fn guest_to_host(g: &mut Guest, host: &UnixStream) -> Result<f64> {
    let mut r = host.try_clone()?;
    let start = Instant::now();
    let reader = std::thread::spawn(move || -> std::io::Result<Instant> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = STREAM_BYTES;
        while left > 0 {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left = left.saturating_sub(n);
        }
        Ok(Instant::now())
    });
    let data = vec![0xa5u8; TX_DATA_MAX];
    let mut sent = 0usize;
    while sent < STREAM_BYTES {
        if start.elapsed() > DEADLINE {
            bail!("guest → host: {sent} of {STREAM_BYTES} bytes sent after {DEADLINE:?}");
        }
        let mut queued = false;
        while sent < STREAM_BYTES && g.tx_slot_free() {
            let n = (STREAM_BYTES - sent)
                .min(TX_DATA_MAX)
                .min(g.credit() as usize);
            if n == 0 {
                break;
            }
            g.send(runv_vmm::devices::virtio::vsock::packet::op::RW, &data[..n])?;
            sent += n;
            queued = true;
        }
        if queued {
            g.flush_tx();
        }
        let wait = if queued {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        g.pump(wait, false)?;
    }
    let done = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
        .context("host read")?;
    Ok(mib_per_s(STREAM_BYTES, done.duration_since(start)))
}

/// A host thread sends 64 bytes and waits for them to come back, PINGS times; the guest
/// echoes every RW payload. Returns the median and 99th percentile in microseconds.
fn round_trips(g: &mut Guest, host: &UnixStream) -> Result<(f64, f64)> {
    let mut s = host.try_clone()?;
    let pinger = std::thread::spawn(move || -> std::io::Result<Vec<f64>> {
        let msg = [0x42u8; PING_LEN];
        let mut back = [0u8; PING_LEN];
        let mut times = Vec::with_capacity(PINGS);
        for _ in 0..PINGS {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(times)
    });
    let start = Instant::now();
    while !pinger.is_finished() {
        if start.elapsed() > DEADLINE {
            bail!("round trips did not finish in {DEADLINE:?}");
        }
        let got = g.pump(Duration::from_millis(20), true)?;
        let mut echoed = false;
        for p in got.iter().filter(|p| !p.payload.is_empty()) {
            g.send(runv_vmm::devices::virtio::vsock::packet::op::RW, &p.payload)?;
            echoed = true;
        }
        if echoed {
            g.flush_tx();
        }
    }
    let mut times = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger thread panicked"))?
        .context("host ping")?;
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok((times[times.len() / 2], p99))
}
