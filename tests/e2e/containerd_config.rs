//! containerd's configuration of the runtime handler `runv`: scripts/containerd-config.sh
//! against temporary roots (no config.toml; a config.toml without and one with a CRI section
//! of its own; every run twice), then a containerd of the test's own whose configuration is
//! the script's result, running a pod on handler `runv` through the CRI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use runv_tests::containerd::{Containerd, BUSYBOX_IMAGE, CRI_NAMESPACE, LIMIT, RUNV_HANDLER};
use runv_tests::cri::{self, Cri};
use runv_tests::*;

/// Where the install puts the drop-in, on the target system.
const DROPIN: &str = "/etc/containerd/conf.d/runv.toml";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository")
        .to_path_buf()
}

/// Runs the script against `root`; fails unless it succeeds; gives its output.
fn configure(root: &Path) -> String {
    let mut cmd = Command::new(repo().join("scripts/containerd-config.sh"));
    cmd.arg(root).stdin(Stdio::null());
    let out = run_with_limit(cmd, None, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "containerd-config.sh {}: {}{}",
        root.display(),
        stdout(&out),
        stderr(&out)
    );
    format!("{}{}", stdout(&out), stderr(&out))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The files under `root/etc/containerd`, with their contents, sorted.
fn files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![root.join("etc/containerd")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            } else {
                found.push((entry.path(), read(&entry.path())));
            }
        }
    }
    found.sort();
    found
}

/// The backups the script left of config.toml.
fn backups(root: &Path) -> Vec<String> {
    files(root)
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("config.toml.runv-backup-"))
        .map(|(_, content)| content)
        .collect()
}

/// Runs the script against `root` a second time: it must change nothing.
fn assert_idempotent(root: &Path) {
    let before = files(root);
    let out = configure(root);
    assert_eq!(files(root), before, "a second run changed files: {out}");
    assert!(!out.contains("restart containerd"), "{out}");
}

/// `containerd config dump` of `config`, where the drop-in's import names it under `root`.
fn dump(root: &Path, config: &Path) -> String {
    let text = read(config).replace(
        &format!("\"{DROPIN}\""),
        &format!("\"{}{DROPIN}\"", root.display()),
    );
    let copy = config.with_file_name("dump-check.toml");
    std::fs::write(&copy, text).expect("write config copy");
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(&copy).args(["config", "dump"]);
    let out = run_with_limit(cmd, None, Duration::from_secs(30));
    std::fs::remove_file(&copy).expect("remove config copy");
    assert!(out.status.success(), "config dump: {}", stderr(&out));
    stdout(&out)
}

/// The merged configuration has the runtimes runc (containerd's default) and runv.
fn assert_runtimes(dump: &str) {
    for (name, kind) in [
        ("runc", "io.containerd.runc.v2"),
        ("runv", "io.containerd.runv.v2"),
    ] {
        let header = format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]");
        let table: String = dump
            .split(&header)
            .nth(1)
            .unwrap_or_else(|| panic!("no runtime {name} in:\n{dump}"))
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            table.contains(&format!("runtime_type = \"{kind}\"")),
            "{name}: {table}"
        );
        if name == "runv" {
            assert!(
                table.contains("privileged_without_host_devices = true"),
                "{table}"
            );
            assert!(
                table.contains("pod_annotations = [\"io.runv.*\"]"),
                "{table}"
            );
        }
    }
}

#[test]
fn no_config_toml_gets_one_that_imports_the_dropin() {
    let root = tempfile::tempdir().expect("temp dir");
    let out = configure(root.path());
    assert!(out.contains("restart containerd"), "{out}");
    let dropin = root.path().join(DROPIN.trim_start_matches('/'));
    assert_eq!(
        read(&dropin),
        read(&repo().join("config/containerd/runv.toml"))
    );
    let config = root.path().join("etc/containerd/config.toml");
    let text = read(&config);
    assert!(text.lines().any(|l| l == "version = 2"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| *l == format!("imports = [\"{DROPIN}\"]"))
            .count(),
        1,
        "{text}"
    );
    assert!(backups(root.path()).is_empty());
    assert_runtimes(&dump(root.path(), &config));
    assert_idempotent(root.path());
}

#[test]
fn config_toml_without_cri_section_gets_the_import() {
    let root = tempfile::tempdir().expect("temp dir");
    let config = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    let other = root.path().join("other.toml");
    std::fs::write(&other, "version = 2\n[debug]\n  level = \"info\"\n").expect("write");
    let original = format!(
        "# the host's own\nversion = 2\nimports = [\n  \"{}\",\n]\noom_score = -999\n\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"/var/lib/containerd/opt\"\n",
        other.display()
    );
    std::fs::write(&config, &original).expect("write config");
    let before = dump(root.path(), &config);
    configure(root.path());

    let text = read(&config);
    assert_eq!(
        text.matches(&format!("\"{DROPIN}\"")).count(),
        1,
        "one import: {text}"
    );
    // Nothing else changed: the same lines once the drop-in's entry is taken out.
    assert_eq!(
        text.replace(&format!("\"{DROPIN}\","), ""),
        original,
        "{text}"
    );
    assert_eq!(backups(root.path()), vec![original.clone()]);
    let after = dump(root.path(), &config);
    assert!(after.contains("oom_score = -999"), "{after}");
    assert!(after.contains("level = \"info\""), "{after}");
    assert!(before.contains("oom_score = -999"));
    assert_runtimes(&after);
    assert_idempotent(root.path());
}

#[test]
fn config_toml_with_cri_section_gets_the_runtime_table() {
    let root = tempfile::tempdir().expect("temp dir");
    let config = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    // As Debian's containerd package has it, and a setting of the host's own.
    let original = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20   sandbox_image = \"registry.example/pause:9\"\n\
         \x20   [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20     bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n\
         \x20 [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";
    std::fs::write(&config, original).expect("write config");
    configure(root.path());

    let text = read(&config);
    assert!(text.starts_with(original), "the host's lines stay: {text}");
    assert!(!text.contains("imports"), "no import: {text}");
    assert_eq!(text.matches("# runv: begin").count(), 1, "{text}");
    assert_eq!(backups(root.path()), vec![original.to_string()]);
    let after = dump(root.path(), &config);
    // An import would have replaced these by containerd's defaults.
    assert!(
        after.contains("sandbox_image = \"registry.example/pause:9\""),
        "{after}"
    );
    assert!(after.contains("bin_dir = \"/usr/lib/cni\""), "{after}");
    assert_runtimes(&after);
    assert_idempotent(root.path());
}

/// A containerd of this test, stopped with whatever it left (pods, shims, their sockets,
/// cgroups, mounts) on every path.
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(args);
        cmd.stdin(Stdio::null());
        run_with_limit(cmd, None, LIMIT)
    }

    fn cgroup_parent(&self) -> String {
        let name = self.dir.path().file_name().expect("dir name");
        format!("/{}", name.to_string_lossy())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(mut client) = std::panic::catch_unwind(|| Cri::connect(&self.socket())) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                client.remove_everything();
            }));
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or_default());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let socket = self.socket().display().to_string();
        for entry in processes_mentioning(&socket) {
            if let Some(Ok(pid)) = entry.split(':').next().map(str::parse::<i32>) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // A killed shim leaves its socket in /run/containerd/s.
            let args: Vec<&str> = entry.split_whitespace().collect();
            let value = |flag: &str| Some(*args.get(args.iter().position(|a| *a == flag)? + 1)?);
            if let (Some(namespace), Some(id)) = (value("-namespace"), value("-id")) {
                use sha2::Digest;
                let key = format!("{socket}/{namespace}/{id}");
                let hash = sha2::Sha256::digest(key.as_bytes());
                let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                let _ = std::fs::remove_file(Path::new("/run/containerd/s").join(name));
            }
        }
        let parent = self.cgroup_parent();
        let mut dirs = Vec::new();
        let mut pending: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        pending.push(PathBuf::from("/sys/fs/cgroup"));
        pending = pending
            .into_iter()
            .map(|h| h.join(parent.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .collect();
        while let Some(dir) = pending.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                pending.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(dir);
        }
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
        let mut mounts: Vec<String> = mounts_mentioning(&self.dir.path().display().to_string())
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The images of the harness (busybox and its pause image), exported to `tar`.
fn export_images(tar: &Path) {
    let harness = Containerd::start();
    harness.import_busybox();
    let tar = tar.display().to_string();
    let out = harness.ctr(
        &[
            "image",
            "export",
            &tar,
            BUSYBOX_IMAGE,
            runv_tests::containerd::PAUSE_IMAGE,
        ],
        LIMIT,
    );
    assert!(out.status.success(), "export: {}", stderr(&out));
}

/// A containerd started with the script's result: a config.toml of the test's own (its root,
/// state and sockets, no CRI section) that the script gave the import of the drop-in. The
/// CRI plugin's settings are the drop-in's alone, so its sandbox image is containerd's
/// default name, given here to the harness's pause image.
#[test]
fn cri_runs_a_pod_on_handler_runv_of_the_dropin() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: containerd needs root");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("runv-ctdcfg")
        .tempdir()
        .expect("temp dir");
    let d = dir.path().display().to_string();
    let root = dir.path().join("target-root");
    let config = root.join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        ),
    )
    .expect("write config");
    configure(&root);
    let dumped = dump(&root, &config);
    assert_runtimes(&dumped);
    let sandbox_image = dumped
        .lines()
        .find_map(|l| l.trim().strip_prefix("sandbox_image = "))
        .expect("sandbox_image")
        .trim_matches('"')
        .to_string();
    let loaded = dir.path().join("config.toml");
    std::fs::write(
        &loaded,
        read(&config).replace(
            &format!("\"{DROPIN}\""),
            &format!("\"{}{DROPIN}\"", root.display()),
        ),
    )
    .expect("write config");
    let tar = dir.path().join("images.tar");
    export_images(&tar);

    let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&loaded)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let daemon = Daemon { dir, child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.ctr(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "containerd: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let plugins = stdout(&daemon.ctr(&["plugins", "ls"]));
    assert!(
        plugins.lines().any(|l| l.contains("io.containerd.grpc.v1")
            && l.contains(" cri ")
            && l.trim_end().ends_with("ok")),
        "the CRI plugin did not load:\n{plugins}\n{}",
        daemon.log()
    );
    let tar = tar.display().to_string();
    let out = daemon.ctr(&["--namespace", CRI_NAMESPACE, "image", "import", &tar]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    let pause = runv_tests::containerd::PAUSE_IMAGE;
    let out = daemon.ctr(&[
        "--namespace",
        CRI_NAMESPACE,
        "image",
        "tag",
        pause,
        &sandbox_image,
    ]);
    assert!(out.status.success(), "tag: {}", stderr(&out));

    let mut cri = Cri::connect(&daemon.socket());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(cri.image_present(&sandbox_image) && cri.image_present(BUSYBOX_IMAGE)) {
        assert!(Instant::now() < deadline, "images: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let name = unique_name("ctdcfg");
    let log_dir = daemon.dir.path().join("pods");
    std::fs::create_dir_all(&log_dir).expect("pod log dir");
    let pod_config = cri::host_network_pod(&name, &log_dir, &daemon.cgroup_parent());

    // A handler the configuration does not have is refused.
    let missing = cri
        .run_pod_sandbox(&pod_config, "runv-missing")
        .expect_err("a pod on an unknown handler");
    assert!(
        missing
            .message()
            .contains("no runtime for \"runv-missing\" is configured"),
        "{missing}"
    );

    let pod = cri
        .run_pod_sandbox(&pod_config, RUNV_HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log()));
    let config = cri::container("main", BUSYBOX_IMAGE, &["sleep", "3600"]);
    let id = cri
        .create_container(&pod, &config, &pod_config)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", daemon.log()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", daemon.log()));
    let out = cri
        .exec_sync(&id, &["uname", "-r"], 60)
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", daemon.log()));
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        built_kernel_release(),
        "the container runs on runv's guest kernel"
    );
    cri.stop_pod_sandbox(&pod).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod).expect("RemovePodSandbox");
    assert!(cri.list_pod_sandboxes().expect("list").is_empty());
    let state = Path::new(STATE_DIR).join(&pod);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.exists() {
        assert!(Instant::now() < deadline, "{} left", state.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}
