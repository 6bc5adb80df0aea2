//! `[runtime] rootfs = "block"`: the container's root is an erofs image of the read-only
//! layers on a read-only virtio-blk disk, under a writable overlay kept in guest memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runv_tests::*;

/// A config selecting block roots with an image cache in `dir`; the other keys come from
/// `RUNV_CONFIG` when it is set (so a test build's initramfs is used).
fn block_config(dir: &Path) -> (PathBuf, PathBuf) {
    let mut table: toml::Table = match std::env::var_os("RUNV_CONFIG") {
        Some(path) => std::fs::read_to_string(&path)
            .expect("read RUNV_CONFIG")
            .parse()
            .expect("parse RUNV_CONFIG"),
        None => toml::Table::new(),
    };
    let cache = dir.join("cache");
    let runtime = table
        .entry("runtime")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[runtime] is a table");
    runtime.insert("rootfs".into(), "block".into());
    runtime.insert(
        "rootfs_cache_dir".into(),
        cache.display().to_string().into(),
    );
    (config_file(dir, &table.to_string()), cache)
}

fn cached_images(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn root_is_an_overlay_over_a_read_only_erofs_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cache) = block_config(dir.path());
    let name = unique_name("blk");
    let script =
        "grep ' / ' /proc/mounts; for fs in /sys/fs/erofs/vd*; do echo erofs:${fs##*/}; done; \
                  cat /sys/block/vda/serial; echo; cat /sys/block/vda/ro; \
                  test -x /bin/busybox && echo image-read; \
                  echo hello > /written && cat /written; \
                  touch /bin/new-file && echo overlay-writable";
    let out = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.env("RUNV_CONFIG", &config)
            .args(["run", "--rm", "--name", &name, "--", "sh", "-c", script]);
        run_with_limit(cmd, None, Duration::from_secs(120))
    });
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let root_line = text.lines().next().unwrap_or_default();
    assert!(root_line.starts_with("overlay / overlay "), "{text}");
    assert!(root_line.contains("upperdir=/run/runv/block/"), "{text}");
    assert!(
        root_line.contains("lowerdir=/run/runv/block/"),
        "the lower layer is the disk's filesystem: {text}"
    );
    // The guest kernel registered an erofs filesystem on the disk, which is read-only.
    assert!(text.lines().any(|l| l == "erofs:vda"), "{text}");
    assert!(text.lines().any(|l| l == "1"), "vda is read-only: {text}");
    assert!(
        text.contains(&format!("rootfs-{}", &name[..name.len().min(13)])),
        "{text}"
    );
    for expected in ["image-read", "hello", "overlay-writable"] {
        assert!(text.lines().any(|l| l == expected), "{expected} in {text}");
    }
    // Only the cached image is left on the host; the writes went with the VM.
    let images = cached_images(&cache);
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(images[0].ends_with(".erofs"), "{images:?}");
    assert!(mounts_mentioning(&cache.display().to_string()).is_empty());
}

#[test]
fn writes_vanish_with_the_sandbox_and_the_image_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cache) = block_config(dir.path());
    let mut images = Vec::new();
    for round in 0..2 {
        let name = unique_name("blk-again");
        let out = with_leak_check(&name, || {
            let mut cmd = runv();
            cmd.env("RUNV_CONFIG", &config).args([
                "run",
                "--rm",
                "--name",
                &name,
                "--",
                "sh",
                "-c",
                "test -e /left-behind && echo found; echo x > /left-behind; echo ok",
            ]);
            run_with_limit(cmd, None, Duration::from_secs(120))
        });
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {text}\n{}",
            stderr(&out)
        );
        assert_eq!(
            text.trim(),
            "ok",
            "round {round}: a write survived its sandbox"
        );
        images.push(cached_images(&cache));
    }
    assert_eq!(images[0], images[1], "the second sandbox reuses the image");
}

#[test]
fn a_writable_rootfs_directory_stays_on_virtiofs() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cache) = block_config(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let name = unique_name("blk-bind");
    let root_arg = root.display().to_string();
    let out = with_leak_check(&name, || {
        let mut cmd = runv();
        cmd.env("RUNV_CONFIG", &config).args([
            "run",
            "--rm",
            "--name",
            &name,
            "--rootfs",
            &root_arg,
            "--",
            "/bin/sh",
            "-c",
            "/bin/busybox grep ' / ' /proc/mounts; /bin/busybox touch /kept",
        ]);
        run_with_limit(cmd, None, Duration::from_secs(120))
    });
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("virtiofs"), "{text}");
    assert!(
        root.join("kept").exists(),
        "a --rootfs directory keeps the writes"
    );
    assert!(cached_images(&cache).is_empty());
}

#[test]
fn ctr_run_gets_the_image_layers_as_a_block_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cache) = block_config(dir.path());
    let toml = std::fs::read_to_string(&config).expect("read the block config");
    let containerd = runv_tests::containerd::Containerd::start_with_runv_config(&toml);
    containerd.import_busybox();
    let id = unique_name("blk-ctr");
    let out = with_leak_check(&id, || {
        containerd.run(
            &id,
            &[
                "sh",
                "-c",
                "grep ' / ' /proc/mounts; for fs in /sys/fs/erofs/vd*; do echo erofs:${fs##*/}; done; \
                 echo hello > /written && cat /written",
            ],
        )
    });
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let root_line = text.lines().next().unwrap_or_default();
    assert!(root_line.starts_with("overlay / overlay "), "{text}");
    assert!(root_line.contains("lowerdir=/run/runv/block/"), "{text}");
    assert!(text.lines().any(|l| l == "erofs:vda"), "{text}");
    assert!(text.lines().any(|l| l == "hello"), "{text}");
    // The image of containerd's snapshot layers is cached; nothing of it stays mounted.
    assert_eq!(
        cached_images(&cache).len(),
        1,
        "{:?}",
        cached_images(&cache)
    );
    assert!(mounts_mentioning(&cache.display().to_string()).is_empty());
}
