//! A containerd of one test alone (Debian's binary, its own root, state and socket under a
//! temporary directory), `ctr` helpers, and a busybox image built with umoci and imported.
//! Dropping it stops containerd and kills whatever shims it left, on every path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{config_file, processes_mentioning, run_with_limit, stderr, stdout};

/// Enough for a TCG boot on a loaded 2-core machine, far from a hang.
pub const LIMIT: Duration = Duration::from_secs(90);
/// containerd's runtime type of runv.
pub const RUNV_RUNTIME: &str = "io.containerd.runv.v2";
/// The busybox image `Containerd::import_busybox` imports.
pub const BUSYBOX_IMAGE: &str = "runv.test/busybox:latest";
/// The installed shim.
pub const SHIM: &str = "/usr/local/bin/containerd-shim-runv-v2";
/// The file name containerd looks the runv shim up by in its `PATH`.
const SHIM_NAME: &str = "containerd-shim-runv-v2";
/// The pause image (busybox sleeping until SIGTERM or SIGINT) `Containerd::start_cri`
/// imports and gives the CRI plugin as its `sandbox_image`.
pub const PAUSE_IMAGE: &str = "runv.test/busybox:pause";
/// The namespace of the CRI plugin's images, pods and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The CRI runtime handler of runv.
pub const RUNV_HANDLER: &str = "runv";
/// The CRI runtime handler of runc.
pub const RUNC_HANDLER: &str = "runc";

/// The pause image's entrypoint: the init of its PID namespace, which ignores a signal it
/// has no handler for, so the traps are needed.
const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// The shim under test: `RUNV_SHIM` if set (containerd then finds it first in its `PATH`),
/// the installed [`SHIM`] otherwise.
pub fn shim_bin() -> PathBuf {
    let bin = std::env::var_os("RUNV_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SHIM));
    assert!(
        bin.exists(),
        "{} does not exist: run `make install` first, or set RUNV_SHIM",
        bin.display()
    );
    bin
}

/// The busybox root the install puts beside the guest.
pub fn busybox_root() -> PathBuf {
    let installed = Path::new("/usr/local/share/runv/rootfs/busybox");
    assert!(
        installed.join("bin/busybox").exists(),
        "{} is missing: run `make install`",
        installed.display()
    );
    installed.to_path_buf()
}

/// A containerd of this test alone; stopped, with whatever shims it left, on every path.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    cri: bool,
}

impl Containerd {
    /// Starts a containerd with the CRI plugin disabled and waits until it answers.
    pub fn start() -> Self {
        Self::start_with_config(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            false,
            None,
        )
    }

    /// Like [`Self::start`], with `runv_toml` as the runv configuration of its shims
    /// (`RUNV_CONFIG` in containerd's environment, which its shims inherit). The
    /// `[guest]` and `[binaries]` defaults stay those of the installed runv.
    pub fn start_with_runv_config(runv_toml: &str) -> Self {
        Self::start_with_config(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            false,
            Some(runv_toml),
        )
    }

    /// Starts a containerd with its CRI plugin (on the same socket): runtime handlers `runv`
    /// (containerd-shim-runv-v2) and `runc`, the locally built `PAUSE_IMAGE` as sandbox image
    /// and `BUSYBOX_IMAGE`, both in the k8s.io namespace (nothing is ever pulled), and CNI
    /// pointed at empty directories of its own: pods must use the host network. Everything
    /// it and its shims keep is under its directory (runc's state too), apart from the
    /// sockets shims make in /run/containerd/s. OOM score adjustments are kept at or above
    /// the test's own (without CAP_SYS_RESOURCE, as in a container, runc could not lower the
    /// pause container's to the CRI's -998).
    pub fn start_cri() -> Self {
        let cri = "[plugins]\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{dir}/opt\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = \"PAUSE\"\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             \x20 stream_server_port = \"0\"\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20   bin_dir = \"{dir}/cni/bin\"\n\
             \x20   conf_dir = \"{dir}/cni/conf\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20   default_runtime_name = \"runc\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
             \x20     runtime_type = \"io.containerd.runc.v2\"\n\
             \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
             \x20       Root = \"{dir}/runc\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runv]\n\
             \x20     runtime_type = \"RUNV\"\n"
            .replace("PAUSE", PAUSE_IMAGE)
            .replace("RUNV", RUNV_RUNTIME);
        let containerd = Self::start_with_config(&cri, true, None);
        containerd.import_images(CRI_NAMESPACE);
        // The CRI plugin learns of imported images from containerd's events.
        let mut client = containerd.cri();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(client.image_present(PAUSE_IMAGE) && client.image_present(BUSYBOX_IMAGE)) {
            assert!(
                Instant::now() < deadline,
                "the CRI plugin does not see the imported images:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    /// A CRI client of this containerd (`start_cri`).
    pub fn cri(&self) -> crate::cri::Cri {
        assert!(
            self.cri,
            "the CRI plugin is disabled: use Containerd::start_cri"
        );
        crate::cri::Cri::connect(&self.socket())
    }

    /// Starts a containerd whose config is the common part (root, state, sockets) followed
    /// by `extra` (TOML of config version 2, which may refer to the directory as `{dir}`).
    fn start_with_config(extra: &str, cri: bool, runv_toml: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("runv-ctd")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        if cri {
            for sub in ["cni/bin", "cni/conf", "opt"] {
                std::fs::create_dir_all(root.join(sub)).expect("CNI and opt dirs");
            }
        }
        let config = format!(
            "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/state\"\n{extra}\
             [grpc]\n  address = \"{root}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{root}/containerd.sock.ttrpc\"\n",
            root = root.display(),
            extra = extra.replace("{dir}", &root.display().to_string()),
        );
        let config_path = config_file(root, &config);
        let log = std::fs::File::create(root.join("containerd.log")).expect("log file");
        let mut command = Command::new("containerd");
        if std::env::var_os("RUNV_SHIM").is_some() {
            let bin = root.join("bin");
            std::fs::create_dir_all(&bin).expect("shim bin dir");
            std::os::unix::fs::symlink(shim_bin(), bin.join(SHIM_NAME)).expect("link the shim");
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", bin.display()));
        }
        if let Some(runv_toml) = runv_toml {
            let path = root.join("runv-config.toml");
            std::fs::write(&path, runv_toml).expect("write the runv config");
            command.env("RUNV_CONFIG", path);
        }
        let child = command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start containerd (scripts/install-deps.sh installs it)");
        let containerd = Self { dir, child, cri };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = containerd.ctr(&["version"], Duration::from_secs(10));
            if out.status.success() {
                return containerd;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}\n{}",
                stderr(&out),
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The temporary directory everything of this containerd lives under.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr ARGS...` against this containerd.
    pub fn ctr(&self, args: &[&str], limit: Duration) -> Output {
        self.ctr_with_stdin(args, None, limit)
    }

    /// `ctr ARGS...` with `stdin` fed to it (`ctr run` passes its stdin to the task).
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(args);
        cmd.stdin(Stdio::null());
        run_with_limit(cmd, stdin, limit)
    }

    /// Builds an OCI image of the installed busybox root with umoci and imports it into the
    /// default namespace as `BUSYBOX_IMAGE` (with `PAUSE_IMAGE`).
    pub fn import_busybox(&self) {
        self.import_images("default");
    }

    /// Builds (once) the images of the installed busybox root with umoci, `BUSYBOX_IMAGE`
    /// (`sh`) and `PAUSE_IMAGE`, and imports both into `namespace`.
    pub fn import_images(&self, namespace: &str) {
        let work = self.dir.path().join("image");
        let tar = work.join("busybox.tar");
        if !tar.exists() {
            build_images(&work, &tar);
        }
        let tar = tar.display().to_string();
        let out = self.ctr(
            &[
                "--namespace",
                namespace,
                "image",
                "import",
                "--base-name",
                "runv.test/busybox",
                &tar,
            ],
            LIMIT,
        );
        assert!(out.status.success(), "import: {}", stderr(&out));
    }

    /// `ctr run --runtime io.containerd.runv.v2 --rm BUSYBOX_IMAGE ID ARGS...`.
    pub fn run(&self, id: &str, args: &[&str]) -> Output {
        let mut all = vec!["run", "--runtime", RUNV_RUNTIME, "--rm", BUSYBOX_IMAGE, id];
        all.extend_from_slice(args);
        self.ctr(&all, LIMIT)
    }

    /// Waits until `ctr task ls` shows task `id` as `status`.
    pub fn wait_for_task(&self, id: &str, status: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let out = self.ctr(&["task", "ls"], Duration::from_secs(10));
            let listed = stdout(&out)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains(status));
            if listed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never {status}: {}\n{}",
                stdout(&out),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pids of the shims this containerd started (they carry its socket on their command
    /// line), of any runtime and namespace.
    pub fn shim_pids(&self) -> Vec<i32> {
        processes_mentioning(&self.socket().display().to_string())
            .iter()
            .filter_map(|p| p.split(':').next()?.parse().ok())
            .collect()
    }

    /// The socket a shim of this containerd serves for task (or group) `id` of `namespace`:
    /// containerd's shims (the Go ones and the Rust crate's) put it in /run/containerd/s,
    /// named by the SHA-256 of containerd's address, the namespace and the id.
    pub fn shim_socket(&self, namespace: &str, id: &str) -> PathBuf {
        use sha2::Digest;
        let key = self.socket().join(namespace).join(id);
        let hash = sha2::Sha256::digest(key.display().to_string().as_bytes());
        let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Path::new("/run/containerd/s").join(name)
    }

    /// The cgroup parent of the pods of this containerd (`cri::host_network_pod`): a path of
    /// its own (a top-level one: no parent shared with a test running beside it), removed
    /// with it.
    pub fn cgroup_parent(&self) -> String {
        let name = self.dir.path().file_name().expect("temp dir name");
        format!("/{}", name.to_string_lossy())
    }

    /// The cgroups below `cgroup_parent` in every hierarchy, deepest first.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let parent = self.cgroup_parent();
        let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            hierarchies.extend(entries.flatten().map(|e| e.path()));
        }
        let mut found = Vec::new();
        for hierarchy in hierarchies {
            let top = hierarchy.join(parent.trim_start_matches('/'));
            let mut pending = vec![top];
            while let Some(dir) = pending.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        found.push(entry.path());
                        pending.push(entry.path());
                    }
                }
            }
        }
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        found
    }

    /// The pid of the runv shim of task `id` in the default namespace.
    pub fn shim_pid(&self, id: &str) -> Option<i32> {
        processes_mentioning(&format!(
            "containerd-shim-runv-v2 -namespace default -id {id} "
        ))
        .first()
        .and_then(|p| p.split(':').next()?.parse().ok())
    }
}

/// Writes to `tar` an OCI layout with the busybox root tagged `latest` (`sh`) and `pause`
/// (`PAUSE_SCRIPT`), building it in `work`.
fn build_images(work: &Path, tar: &Path) {
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let tagged = format!("{}:latest", layout.display());
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run umoci");
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    };
    std::fs::create_dir_all(work).expect("image dir");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &tagged]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &tagged])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox_root().display()))
        .arg(&rootfs));
    run(Command::new("umoci")
        .args(["repack", "--image", &tagged])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &tagged,
        "--tag",
        "pause",
        "--config.entrypoint",
        "/bin/sh",
        "--config.entrypoint",
        "-c",
        "--config.entrypoint",
        PAUSE_SCRIPT,
    ]));
    run(Command::new("umoci").args(["config", "--image", &tagged, "--config.cmd", "sh"]));
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(tar)
        .arg("."));
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.cri {
            // Pods and containers a failed test left, removed the way the kubelet would.
            if let Ok(mut client) = std::panic::catch_unwind(|| self.cri()) {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    client.remove_everything();
                }));
            }
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or_default());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims this containerd started carry its socket on their command line; a killed one
        // leaves its socket in /run/containerd/s, removed here.
        let mut sockets = Vec::new();
        for entry in processes_mentioning(&self.socket().display().to_string()) {
            if let Some(Ok(pid)) = entry.split(':').next().map(str::parse::<i32>) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let args: Vec<&str> = entry.split_whitespace().collect();
            let value = |flag: &str| {
                let at = args.iter().position(|a| *a == flag)?;
                args.get(at + 1).copied()
            };
            if let (Some(namespace), Some(id)) = (value("-namespace"), value("-id")) {
                sockets.push(self.shim_socket(namespace, id));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        // Containers of runc shims killed above (their state is under our directory).
        if self.cri {
            let runc_root = self.dir.path().join("runc").join(CRI_NAMESPACE);
            let runc = |args: &[&str]| {
                Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(args)
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
            };
            if let Ok(out) = runc(&["list", "-q"]) {
                for id in stdout(&out).lines() {
                    let _ = runc(&["kill", "--all", id, "KILL"]);
                    let _ = runc(&["delete", "--force", id]);
                }
            }
        }
        // The cgroups of its pods (empty now that their processes are gone), then the parent.
        if self.cri {
            for dir in self.cgroups() {
                let _ = std::fs::remove_dir(dir);
            }
            let parent = self.cgroup_parent();
            let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
            if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
                hierarchies.extend(entries.flatten().map(|e| e.path()));
            }
            for hierarchy in hierarchies {
                let dir = hierarchy.join(parent.trim_start_matches('/'));
                if dir.is_dir() {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        // containerd's own mounts under its root (none are expected; never leave one).
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = crate::mounts_mentioning(&root)
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
