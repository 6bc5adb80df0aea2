//! Host bind mounts (volumes) end to end: `runv run -v` and `ctr run --mount`, through the
//! sandbox's virtio-fs share into a container in a real QEMU VM.

use std::path::Path;
use std::time::{Duration, Instant};

use runv_tests::containerd::{self, Containerd};
use runv_tests::*;

/// Enough for a TCG boot on a loaded 2-core machine, far from a hang.
const LIMIT: Duration = Duration::from_secs(90);

fn root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: runv run needs root");
    }
    root
}

/// Host files to share: `dir/in/hello`, an empty `dir/out`, `dir/ro/keep` and `dir/file`.
fn host_files() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("runv-vol")
        .tempdir()
        .expect("temp dir");
    for sub in ["in", "out", "ro"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("in/hello"), "hello from the host\n").unwrap();
    std::fs::write(dir.path().join("ro/keep"), "keep\n").unwrap();
    std::fs::write(dir.path().join("file"), "single file\n").unwrap();
    dir
}

fn mountinfo_mentions(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn run_with_volumes_reads_writes_and_enforces_read_only() {
    if !root() {
        return;
    }
    let host = host_files();
    let d = host.path().display().to_string();
    let name = unique_name("vol");
    let script = "cat /in/hello; \
         echo from-the-guest > /out/new; \
         echo denied > /ro/new || echo ro-dir-refused; \
         echo more >> /ro/keep || echo ro-file-refused; \
         cat /etc/single; \
         echo more >> /etc/single || echo single-ro-refused";
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &[
                "-v",
                &format!("{d}/in:/in"),
                "-v",
                &format!("{d}/out:/out:rw"),
                "-v",
                &format!("{d}/ro:/ro:ro"),
                "-v",
                &format!("{d}/file:/etc/single:ro"),
                "--",
                "sh",
                "-c",
                script,
            ],
            None,
            LIMIT,
        )
    });
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout {text}\nstderr {err}");
    assert_eq!(
        text,
        "hello from the host\nro-dir-refused\nro-file-refused\nsingle file\nsingle-ro-refused\n",
        "stderr {err}"
    );
    assert_eq!(
        err.matches("Read-only file system").count(),
        3,
        "each write to a read-only volume fails with EROFS: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out/new")).unwrap(),
        "from-the-guest\n",
        "the host sees what the container wrote"
    );
    assert!(!host.path().join("ro/new").exists());
    assert_eq!(
        std::fs::read_to_string(host.path().join("ro/keep")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("file")).unwrap(),
        "single file\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("in/hello")).unwrap(),
        "hello from the host\n",
        "the host files survive the sandbox's removal"
    );
    let sandbox_dir = Path::new(STATE_DIR).join(&name).display().to_string();
    assert_eq!(mountinfo_mentions(&sandbox_dir), Vec::<String>::new());
    assert_eq!(mountinfo_mentions(&d), Vec::<String>::new());
}

#[test]
fn unshareable_volumes_fail_before_a_vm_starts() {
    if !root() {
        return;
    }
    let host = host_files();
    let missing = host.path().join("missing");
    for (volume, want) in [
        (
            format!("{}:/data", missing.display()),
            format!("(/data): source {} does not exist", missing.display()),
        ),
        (
            "/dev/null:/dev/null2".to_string(),
            "(/dev/null2): source /dev/null is a device node".to_string(),
        ),
        (
            "relative:/data".to_string(),
            "Invalid volume \"relative:/data\": the host path must be absolute".to_string(),
        ),
    ] {
        let name = unique_name("vol-bad");
        let start = Instant::now();
        let out = with_leak_check(&name, || {
            run_container(&name, &["-v", &volume, "--", "true"], None, LIMIT)
        });
        assert_eq!(out.status.code(), Some(125), "{volume}: {}", stderr(&out));
        // Named by its index among the spec's mounts (after runv's defaults) and destination.
        assert!(
            stderr(&out).contains("runv: mounts[") || want.starts_with("Invalid volume"),
            "{volume}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(&want), "{volume}: {}", stderr(&out));
        // Refused up front: no VM booted (a TCG boot alone takes seconds).
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{volume}: took {:?}",
            start.elapsed()
        );
    }
    assert!(host.path().join("in/hello").exists());
}

#[test]
fn ctr_run_with_bind_mounts() {
    containerd::shim_bin();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: containerd needs root");
        return;
    }
    let containerd = Containerd::start();
    containerd.import_busybox();
    let host = host_files();
    let d = host.path().display().to_string();
    let id = unique_name("vol-ctr");
    let script = "cat /in/hello; echo from-ctr > /out/new; \
         echo denied > /ro/new || echo ro-refused; cat /ro/keep";
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                containerd::RUNV_RUNTIME,
                "--mount",
                &format!("type=bind,src={d}/in,dst=/in,options=rbind:ro"),
                "--mount",
                &format!("type=bind,src={d}/out,dst=/out,options=rbind:rw"),
                "--mount",
                &format!("type=bind,src={d}/ro,dst=/ro,options=rbind:ro"),
                containerd::BUSYBOX_IMAGE,
                &id,
                "sh",
                "-c",
                script,
            ],
            LIMIT,
        )
    });
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "stdout {text}\nstderr {err}\n{}",
        containerd.log()
    );
    // ctr puts a terminal-less task's stderr on its own stderr.
    assert_eq!(
        text, "hello from the host\nro-refused\nkeep\n",
        "stderr {err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out/new")).unwrap(),
        "from-ctr\n"
    );
    assert!(!host.path().join("ro/new").exists());
    assert!(host.path().join("in/hello").exists());

    // A missing source fails the create, naming the mount.
    let id = unique_name("vol-ctr-bad");
    let missing = host.path().join("missing");
    let out = with_leak_check(&id, || {
        containerd.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                containerd::RUNV_RUNTIME,
                "--mount",
                &format!(
                    "type=bind,src={},dst=/data,options=rbind",
                    missing.display()
                ),
                containerd::BUSYBOX_IMAGE,
                &id,
                "true",
            ],
            LIMIT,
        )
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "(/data): source {} does not exist",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );
}
