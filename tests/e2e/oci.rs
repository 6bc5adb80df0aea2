//! The OCI conformance matrix: every case is a bundle (the busybox root, runv-runtimetest and
//! a config.json built from containerd's default spec with one change) whose process is
//! runv-runtimetest, which checks from inside the container that the runtime honoured the
//! spec. Each case runs with `runv run --bundle`, through containerd with the runv shim, and
//! through containerd with runc as the reference: a check that fails under runc is a bug of
//! the checker, not of runv.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runv_tests::containerd::{self, Containerd};
use runv_tests::*;
use serde_json::{json, Value};

/// A VM boot under TCG on a loaded machine, with room to spare; never a wait forever.
const LIMIT: Duration = Duration::from_secs(120);

/// Where the checker sits in every container's root.
const CHECKER: &str = "/runtimetest/runv-runtimetest";
const SPEC_IN_ROOT: &str = "/runtimetest/config.json";

/// One case: a name and the change it makes to the base spec (given the bundle directory,
/// where it may put host-side files such as volume sources).
struct Case {
    name: &'static str,
    change: fn(&mut Value, &Path),
}

/// The cases runv passes today.
const CASES: &[Case] = &[
    Case {
        name: "base",
        change: |_, _| {},
    },
    Case {
        name: "hostname",
        change: hostname,
    },
    Case {
        name: "user",
        change: user,
    },
    Case {
        name: "capabilities",
        change: capabilities,
    },
    Case {
        name: "no-new-privileges",
        change: |s, _| s["process"]["noNewPrivileges"] = json!(true),
    },
    Case {
        name: "rlimits",
        change: rlimits,
    },
    Case {
        name: "oom-score-adj",
        change: |s, _| s["process"]["oomScoreAdj"] = json!(300),
    },
    Case {
        name: "readonly-root",
        change: |s, _| s["root"]["readonly"] = json!(true),
    },
    Case {
        name: "tmpfs",
        change: tmpfs,
    },
    Case {
        name: "masked-readonly-paths",
        change: masked_readonly,
    },
    Case {
        name: "sysctls",
        change: sysctls,
    },
    Case {
        name: "cgroup-limits",
        change: cgroup_limits,
    },
    Case {
        name: "no-cgroup-namespace",
        change: no_cgroup_namespace,
    },
    Case {
        name: "domainname",
        change: domainname,
    },
    Case {
        name: "seccomp-errno",
        change: seccomp_errno,
    },
    Case {
        name: "seccomp-default-deny",
        change: seccomp_default_deny,
    },
    Case {
        name: "user-namespace",
        change: user_namespace,
    },
    Case {
        name: "devices",
        change: devices,
    },
    Case {
        name: "volumes",
        change: volumes,
    },
    Case {
        name: "cgroup-low-cpuset-io",
        change: cgroup_low_cpuset_io,
    },
];

/// containerd's default capabilities.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The spec `ctr run` generates (containerd's default Unix spec), with the cgroup mount and
/// namespace of a CRI container, no network namespace (the VM's is the pod's) and the
/// checker as the process.
fn base_spec(rootfs: &Path) -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [CHECKER, SPEC_IN_ROOT],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "RUNV_OCI_CASE=1"],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": false
        },
        "root": {"path": rootfs, "readonly": false},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

fn hostname(s: &mut Value, _: &Path) {
    s["hostname"] = json!("oci-host");
}

fn domainname(s: &mut Value, _: &Path) {
    s["hostname"] = json!("oci-host");
    s["domainname"] = json!("oci.example");
}

fn user(s: &mut Value, _: &Path) {
    s["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 23});
}

fn capabilities(s: &mut Value, _: &Path) {
    let some = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    s["process"]["capabilities"] = json!({
        "bounding": some,
        "effective": some,
        "permitted": some,
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"]
    });
}

fn rlimits(s: &mut Value, _: &Path) {
    s["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
        {"type": "RLIMIT_NPROC", "hard": 4000, "soft": 3000}
    ]);
}

fn push_mount(s: &mut Value, mount: Value) {
    s["mounts"].as_array_mut().expect("mounts").push(mount);
}

fn tmpfs(s: &mut Value, _: &Path) {
    push_mount(
        s,
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
               "options": ["ro", "nosuid", "nodev", "noexec", "size=1m", "mode=700"]}),
    );
}

fn masked_readonly(s: &mut Value, bundle: &Path) {
    let root = bundle.join("rootfs");
    std::fs::create_dir_all(root.join("secret-dir")).expect("secret dir");
    std::fs::write(root.join("secret-dir/key"), "k").expect("secret file");
    std::fs::write(root.join("secret.txt"), "secret").expect("secret file");
    std::fs::create_dir_all(root.join("ro-dir")).expect("ro dir");
    std::fs::write(root.join("ro.txt"), "ro").expect("ro file");
    for (key, paths) in [
        ("maskedPaths", ["/secret-dir", "/secret.txt"]),
        ("readonlyPaths", ["/ro-dir", "/ro.txt"]),
    ] {
        let list = s["linux"][key].as_array_mut().expect("path list");
        list.extend(paths.iter().map(|p| json!(p)));
    }
}

fn sysctls(s: &mut Value, _: &Path) {
    // A net.* sysctl needs a network namespace of the container's own (runc refuses it in
    // the host's).
    s["linux"]["sysctl"] = json!({"kernel.msgmax": "4096", "net.ipv4.ip_forward": "1"});
    s["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "network"}));
}

fn cgroup_limits(s: &mut Value, _: &Path) {
    s["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
    s["linux"]["resources"]["pids"] = json!({"limit": 64});
    s["linux"]["resources"]["cpu"] = json!({"quota": 50_000, "period": 100_000, "shares": 512});
}

fn no_cgroup_namespace(s: &mut Value, b: &Path) {
    cgroup_limits(s, b);
    s["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|ns| ns["type"] != "cgroup");
}

fn seccomp_errno(s: &mut Value, _: &Path) {
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO"}
        ]
    });
}

/// The syscalls a container of this matrix makes (the runtimes' last steps before execve,
/// a static musl program, busybox): a realistic allow list; everything else fails with
/// EPERM.
const ALLOWED_SYSCALLS: &[&str] = &[
    "access",
    "arch_prctl",
    "brk",
    "capget",
    "capset",
    "chdir",
    "clock_gettime",
    "clock_nanosleep",
    "clone",
    "clone3",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_wait",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fchdir",
    "fchown",
    "fcntl",
    "fstat",
    "fstatfs",
    "futex",
    "getcwd",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getpgrp",
    "getpid",
    "getppid",
    "getrandom",
    "getrlimit",
    "getsid",
    "gettid",
    "gettimeofday",
    "getuid",
    "ioctl",
    "kill",
    "lseek",
    "lstat",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "prlimit64",
    "pselect6",
    "read",
    "readlink",
    "readlinkat",
    "readv",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "select",
    "set_robust_list",
    "set_tid_address",
    "setgid",
    "setgroups",
    "setresgid",
    "setresuid",
    "setsid",
    "setuid",
    "sigaltstack",
    "stat",
    "statfs",
    "statx",
    "tgkill",
    "uname",
    "wait4",
    "waitid",
    "write",
    "writev",
];

fn seccomp_default_deny(s: &mut Value, _: &Path) {
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ALLOWED_SYSCALLS, "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 30}
        ]
    });
}

fn user_namespace(s: &mut Value, _: &Path) {
    let namespaces = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
    // sysfs can only be mounted by the owner of the network namespace.
    namespaces.push(json!({"type": "user"}));
    namespaces.push(json!({"type": "network"}));
    s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
}

fn devices(s: &mut Value, _: &Path) {
    // 1:3 (a null device) is allowed, 1:11 (kmsg) is not: opening it fails with EPERM.
    s["linux"]["devices"] = json!([
        {"path": "/dev/oci-null", "type": "c", "major": 1, "minor": 3, "fileMode": 416, "uid": 0, "gid": 0},
        {"path": "/dev/oci-kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 384, "uid": 0, "gid": 0}
    ]);
    s["linux"]["resources"]["devices"] = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    ]);
}

fn volumes(s: &mut Value, bundle: &Path) {
    for name in ["vol-ro", "vol-rw"] {
        let dir = bundle.join(name);
        std::fs::create_dir_all(&dir).expect("volume dir");
        std::fs::write(dir.join("file"), name).expect("volume file");
    }
    push_mount(
        s,
        json!({"destination": "/vol-ro", "type": "bind", "source": bundle.join("vol-ro"),
               "options": ["rbind", "ro"]}),
    );
    push_mount(
        s,
        json!({"destination": "/vol-rw", "type": "bind", "source": bundle.join("vol-rw"),
               "options": ["rbind", "rw"]}),
    );
}

fn cgroup_low_cpuset_io(s: &mut Value, _: &Path) {
    s["linux"]["resources"]["memory"] = json!({"limit": 128 << 20, "reservation": 32 << 20});
    s["linux"]["resources"]["cpu"] = json!({"cpus": "0"});
    s["linux"]["resources"]["blockIO"] = json!({"weight": 500});
}

/// The checker binary: RUNV_RUNTIMETEST, or the workspace's static release build.
fn checker_bin() -> PathBuf {
    let bin = std::env::var_os("RUNV_RUNTIMETEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/release/runv-runtimetest")
        });
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build --release -p runv-runtimetest --target \
         x86_64-unknown-linux-musl`, or set RUNV_RUNTIMETEST",
        bin.display()
    );
    bin
}

/// A bundle of `case` in a directory of its own: rootfs (a copy of the busybox root, the
/// checker and the spec under /runtimetest) and config.json.
fn bundle(case: &Case) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("runv-oci")
        .tempdir()
        .expect("bundle dir");
    let bundle = dir.path();
    // Mapped users (a user namespace, a non-root process) must reach the root.
    set_mode(bundle, 0o755);
    let rootfs = bundle.join("rootfs");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(containerd::busybox_root())
        .arg(&rootfs)
        .status()
        .expect("cp");
    assert!(copied.success(), "copy the busybox root");
    let tests = rootfs.join("runtimetest");
    std::fs::create_dir_all(&tests).expect("runtimetest dir");
    set_mode(&tests, 0o755);
    let checker = rootfs.join(CHECKER.trim_start_matches('/'));
    std::fs::copy(checker_bin(), &checker).expect("copy the checker");
    set_mode(&checker, 0o755);
    let mut spec = base_spec(&rootfs);
    (case.change)(&mut spec, bundle);
    let text = serde_json::to_string_pretty(&spec).expect("spec JSON");
    let in_root = rootfs.join(SPEC_IN_ROOT.trim_start_matches('/'));
    std::fs::write(&in_root, &text).expect("spec in the root");
    set_mode(&in_root, 0o644);
    let config = bundle.join("config.json");
    std::fs::write(&config, &text).expect("config.json");
    (dir, config)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// How a case is run.
#[derive(Clone, Copy, Debug)]
enum Runner {
    RunvBundle,
    Containerd(&'static str),
}

/// Runs `case` and returns its `not ok` lines (or why it did not run), printing the
/// checker's output.
fn run_case(runner: Runner, case: &Case, containerd: Option<&Containerd>) -> Vec<String> {
    let (dir, config) = bundle(case);
    let id = unique_name(&format!("oci-{}", case.name));
    let out = match runner {
        Runner::RunvBundle => with_leak_check(&id, || {
            let mut cmd = runv();
            cmd.args(["run", "--rm", "--name", &id, "--bundle"])
                .arg(dir.path());
            run_with_limit(cmd, None, LIMIT)
        }),
        Runner::Containerd(runtime) => {
            let containerd = containerd.expect("containerd");
            let config = config.display().to_string();
            let run = || {
                containerd.ctr(
                    &[
                        "run",
                        "--rm",
                        "--runtime",
                        runtime,
                        "--config",
                        &config,
                        &id,
                    ],
                    LIMIT,
                )
            };
            if runtime == containerd::RUNV_RUNTIME {
                with_leak_check(&id, run)
            } else {
                run()
            }
        }
    };
    let text = stdout(&out);
    println!("== {} ({runner:?}) ==\n{text}{}", case.name, stderr(&out));
    let mut failures: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("not ok"))
        .map(|l| format!("{}: {l}", case.name))
        .collect();
    let finished = text.lines().any(|l| l.starts_with("# "));
    if failures.is_empty() && (!out.status.success() || !finished) {
        failures.push(format!(
            "{}: did not run to the end ({}): {}",
            case.name,
            out.status,
            stderr(&out).trim()
        ));
    }
    drop(dir);
    failures
}

/// Runs every case with `runner`; fails listing every `not ok` line.
fn matrix(runner: Runner, cases: &[Case]) {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: the matrix needs root");
        return;
    }
    checker_bin();
    let containerd = match runner {
        Runner::RunvBundle => {
            runv_bin();
            None
        }
        Runner::Containerd(_) => Some(Containerd::start()),
    };
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|case| run_case(runner, case, containerd.as_ref()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed checks ({runner:?}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn runv_run_bundle() {
    matrix(Runner::RunvBundle, CASES);
}

#[test]
fn containerd_runv() {
    assert!(
        Path::new(containerd::SHIM).exists(),
        "{} does not exist",
        containerd::SHIM
    );
    matrix(Runner::Containerd(containerd::RUNV_RUNTIME), CASES);
}

/// What the reference runc (Debian 12's 1.1) does not do itself: case and `not ok` line
/// prefix. runc sets the domainname only from 1.2 on.
const REFERENCE_GAPS: &[(&str, &str)] = &[("domainname", "not ok domainname:")];

/// The reference: runc through containerd passes every case, so a
/// check that fails here is a bug of the checker (apart from `REFERENCE_GAPS`).
#[test]
fn runc_reference() {
    let all: Vec<&Case> = CASES.iter().collect();
    let failures: Vec<String> = {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: the matrix needs root");
            return;
        }
        checker_bin();
        let containerd = Containerd::start();
        all.iter()
            .flat_map(|case| {
                run_case(Runner::Containerd(RUNC_RUNTIME), case, Some(&containerd))
                    .into_iter()
                    .filter(|line| {
                        !REFERENCE_GAPS
                            .iter()
                            .any(|(name, gap)| line.starts_with(&format!("{name}: {gap}")))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        failures.is_empty(),
        "checker bugs (runc fails them):\n{}",
        failures.join("\n")
    );
}

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
