//! Section 7: TCP between a container and the host side of the pod's CNI bridge, runv against
//! runc in the same run: each container (on its own pod namespace from the `bridge` +
//! `host-local` plugins) runs an echo server (`nc -l -p PORT -e cat`); the bench connects from
//! the bridge's host address, times 64-byte round trips, then streams data through the echo
//! and times it until all of it came back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use runv_tests::cni::Bridge;

use crate::agent::{spec, BUSYBOX_ROOT};
use crate::report::Report;
use crate::stats::Summary;
use crate::Options;

const SECTION: &str = "7 pod network";
const PORT: u16 = 9000;
const ROUND_TRIPS: usize = 200;
const STREAM_BYTES: usize = 8 << 20;
const SERVER: [&str; 6] = ["nc", "-l", "-p", "9000", "-e", "cat"];

/// Connects to the echo server at `ip`, retrying while the container starts.
fn connect(ip: &str, server: &mut Child) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match TcpStream::connect((ip, PORT)) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                if let Ok(Some(status)) = server.try_wait() {
                    bail!("the echo server ended ({status}) before it answered");
                }
                if Instant::now() > deadline {
                    bail!("connect {ip}:{PORT}: {e}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Median round trip (µs) and echo throughput (MB/s) over one connection.
fn measure(mut stream: TcpStream) -> Result<(f64, f64)> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let message = [0x5au8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut back)?;
        rtts.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let rtt = Summary::of(&rtts).map(|s| s.median).unwrap_or_default();
    let mut reader = stream.try_clone()?;
    let start = Instant::now();
    let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        while got < STREAM_BYTES {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    });
    let chunk = vec![0xa5u8; 64 << 10];
    let mut sent = 0;
    while sent < STREAM_BYTES {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    let elapsed = start.elapsed().as_secs_f64();
    if got < STREAM_BYTES {
        bail!("only {got} of {STREAM_BYTES} bytes came back");
    }
    stream.shutdown(std::net::Shutdown::Both)?;
    // The stream's size is far below f64's exact-integer range.
    #[allow(clippy::cast_precision_loss)]
    let mbps = STREAM_BYTES as f64 / elapsed / 1e6;
    Ok((rtt, mbps))
}

fn wait_exit(child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                bail!("{what} exited with {status}")
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{what} did not end after its client left");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runv_once(o: &Options, netns: &Path, ip: &str, name: &str) -> Result<(f64, f64)> {
    let mut server = Command::new(&o.runv)
        .args(["run", "--rm", "--name", name, "--netns"])
        .arg(netns)
        .arg("--")
        .args(SERVER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start runv run")?;
    let result = connect(ip, &mut server).and_then(measure);
    if result.is_err() {
        let _ = server.kill();
    }
    wait_exit(&mut server, "runv run")?;
    result
}

fn runc_once(dir: &Path, netns: &Path, ip: &str, id: &str) -> Result<(f64, f64)> {
    let bundle = dir.join(id);
    std::fs::create_dir_all(&bundle)?;
    let mut config = spec(Path::new(BUSYBOX_ROOT), &format!("/runv-bench-{id}"));
    config["process"]["args"] = serde_json::json!(SERVER);
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.push(serde_json::json!({"type": "network", "path": netns}));
    }
    std::fs::write(bundle.join("config.json"), config.to_string())?;
    let root = dir.join("runc-state");
    let mut server = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start runc run")?;
    let result = connect(ip, &mut server).and_then(measure);
    if result.is_err() {
        let _ = server.kill();
    }
    let exited = wait_exit(&mut server, "runc run");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", id])
        .stderr(Stdio::null())
        .status();
    exited?;
    result
}

pub fn run(o: &Options, report: &mut Report) -> Result<()> {
    let mut bridge = Bridge::new(1500);
    let runv_pod = bridge.add_pod("bench-runv");
    let runc_pod = bridge.add_pod("bench-runc");
    let dir = tempfile::tempdir()?;
    let (mut runv_rtt, mut runv_mbps, mut runc_rtt, mut runc_mbps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs {
        let name = format!("bench-net-{}-{run}", std::process::id());
        let (rtt, mbps) = runv_once(o, &runv_pod.path(), &runv_pod.address, &name)?;
        runv_rtt.push(rtt);
        runv_mbps.push(mbps);
        let (rtt, mbps) = runc_once(dir.path(), &runc_pod.path(), &runc_pod.address, &name)?;
        runc_rtt.push(rtt);
        runc_mbps.push(mbps);
    }
    report.row(
        SECTION,
        "64-byte TCP round trip (median of 200)",
        "runv",
        "us",
        &runv_rtt,
    );
    report.row(
        SECTION,
        "64-byte TCP round trip (median of 200)",
        "runc",
        "us",
        &runc_rtt,
    );
    report.row(
        SECTION,
        "8 MiB echoed through the container",
        "runv",
        "MB/s",
        &runv_mbps,
    );
    report.row(
        SECTION,
        "8 MiB echoed through the container",
        "runc",
        "MB/s",
        &runc_mbps,
    );
    let median = |v: &[f64]| Summary::of(v).map(|s| s.median).unwrap_or(f64::NAN);
    let rtt_ratio = median(&runv_rtt) / median(&runc_rtt);
    let tput_ratio = median(&runv_mbps) / median(&runc_mbps);
    report.extra(
        "network",
        serde_json::json!({"rtt_runv_over_runc": rtt_ratio, "throughput_runv_over_runc": tput_ratio}),
    );
    report.note(
        SECTION,
        format!(
            "each container on its own pod namespace of one CNI bridge, an echo server \
             (`nc -l -e cat`) reached from the bridge's host address; runv/runc: round trip \
             {rtt_ratio:.1}×, throughput {tput_ratio:.2}× (under TCG the guest's network stack \
             is emulated)"
        ),
    );
    Ok(())
}
