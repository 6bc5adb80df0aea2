//! The echo payload (`echo_payload.rs`) in a real runv-vmm VM: a host client on the
//! hybrid-vsock socket times 64-byte round trips and a stream echoed back, through KVM exits,
//! ioeventfds, runv-vmm's event loop and its vsock device. The guest polls its rings (no
//! interrupts), so this is the device path without a guest kernel.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::child::{Guard, ScratchDir};
use crate::payload::pvh_elf;

/// Per-run figures: median and 99th-percentile round trip (us), echo throughput (MiB/s).
pub struct VmRun {
    pub rtt_median_us: f64,
    pub rtt_p99_us: f64,
    pub echo_mib_s: f64,
}

pub fn run_once(runv_vmm: &Path, pings: usize, ping_len: usize, stream: usize) -> Result<VmRun> {
    let dir = ScratchDir::new("vsock-vm")?;
    let kernel = dir.path().join("echo.elf");
    std::fs::write(&kernel, pvh_elf(&super::echo_payload::code()))?;
    let uds = dir.path().join("v.sock");
    let mut vm = Guard::spawn(
        "runv-vmm",
        Command::new(runv_vmm)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--vsock-uds")
            .arg(&uds)
            .args(["--serial", "none", "--memory-mib", "128"]),
    )?;
    let mut s = connect(&mut vm, &uds)?;
    let mut times = Vec::with_capacity(pings);
    let msg = vec![0x42u8; ping_len];
    let mut back = vec![0u8; ping_len];
    for _ in 0..pings {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back).context("echo")?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        if back != msg {
            bail!("the guest echoed different bytes");
        }
    }
    times.sort_by(f64::total_cmp);
    let echo_mib_s = echo_stream(&s, stream)?;
    drop(vm.kill_and_stderr());
    Ok(VmRun {
        rtt_median_us: times[times.len() / 2],
        rtt_p99_us: times[(times.len() * 99 / 100).min(times.len() - 1)],
        echo_mib_s,
    })
}

fn connect(vm: &mut Guard, uds: &Path) -> Result<UnixStream> {
    let start = Instant::now();
    let mut s = loop {
        if let Ok(s) = UnixStream::connect(uds) {
            break s;
        }
        vm.check_running()?;
        if start.elapsed() > Duration::from_secs(10) {
            bail!("no vsock socket at {}", uds.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"CONNECT 1024\n")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).context("read the OK line")?;
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        bail!("handshake answer {:?}", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

/// A writer thread streams `total` bytes while this thread reads the echo back.
fn echo_stream(s: &UnixStream, total: usize) -> Result<f64> {
    let mut w = s.try_clone()?;
    let mut r = s.try_clone()?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).context("read the echoed stream")?;
        if n == 0 {
            bail!("EOF after {got} of {total} echoed bytes");
        }
        got += n;
    }
    let elapsed = start.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .context("host write")?;
    Ok(total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64())
}
