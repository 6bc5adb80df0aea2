//! `linux.seccomp` with the real agent on this host (as root): the profile reaches the
//! container's init and exec processes, the kernel enforces it, and bad profiles are
//! refused at create with the field named and nothing left behind.

// This file uses a part of the shared harness only.
mod common;

use common::*;

/// A default-allow profile whose only rule makes `mkdir` fail with `errno`.
fn deny_mkdir(errno: u32) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}
        ]
    })
}

fn with_seccomp(agent: &TestAgent, args: &[&str], seccomp: Value) -> Value {
    let mut spec = agent.spec(args);
    spec["linux"]["seccomp"] = seccomp;
    spec
}

const STATUS: &str = "grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errno_rules_filter_the_container() {
    let (agent, client) = TestAgent::start("sc-errno").await;
    let script =
        format!("mkdir /tmp/d; echo mkdir=$?; touch /tmp/f && echo touched; ls /tmp; {STATUS}");
    let spec = with_seccomp(&agent, &["sh", "-c", &script], deny_mkdir(1));
    let (status, out, err) = run(&client, &agent, "eperm", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "stderr: {err}");
    assert_eq!(
        out,
        "mkdir=1\ntouched\nf\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"
    );

    // Another errno reaches the process as it is.
    let spec = with_seccomp(&agent, &["mkdir", "/tmp/d"], deny_mkdir(28));
    let (status, _, err) = run(&client, &agent, "enospc", &spec).await;
    assert_eq!(status, 1);
    assert!(err.contains("No space left on device"), "stderr: {err}");

    // The same without the profile: mkdir works and there is no filter.
    let spec = agent.spec(&["sh", "-c", &format!("mkdir /tmp/d && echo made; {STATUS}")]);
    let (status, out, err) = run(&client, &agent, "plain", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert!(
        out.starts_with("made\nNoNewPrivs:\t1\nSeccomp:\t0\n"),
        "{out}"
    );

    // Filter flags the kernel takes.
    let mut seccomp = deny_mkdir(1);
    seccomp["flags"] = json!(["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
    let spec = with_seccomp(
        &agent,
        &["sh", "-c", "mkdir /tmp/d || echo refused"],
        seccomp,
    );
    let (status, out, err) = run(&client, &agent, "flags", &spec).await;
    assert_eq!((status, out.as_str()), (0, "refused\n"), "stderr: {err}");
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_conditions_select_calls() {
    let (agent, client) = TestAgent::start("sc-args").await;
    // kill(pid, sig): SIGTERM is refused, signals from 30 up get EINVAL, others pass
    // (and find no process 999 in the container's pid namespace).
    let seccomp = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
             "args": [{"index": 1, "value": 30, "op": "SCMP_CMP_GE"},
                      {"index": 1, "value": 64, "op": "SCMP_CMP_LE"}]}
        ]
    });
    let script = "kill -TERM 999; kill -HUP 999; kill -31 999; kill -0 $$ && echo alive";
    let spec = with_seccomp(&agent, &["sh", "-c", script], seccomp);
    let (status, out, err) = run(&client, &agent, "kill", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(out, "alive\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "stderr: {err}");
    assert!(lines[0].contains("Operation not permitted"), "{err}");
    assert!(lines[1].contains("No such process"), "{err}");
    assert!(lines[2].contains("Invalid argument"), "{err}");
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_action_kills_with_sigsys() {
    let (agent, client) = TestAgent::start("sc-kill").await;
    let seccomp = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]
    });
    let spec = with_seccomp(&agent, &["mkdir", "/tmp/d"], seccomp);
    create(&client, &agent, "killed", &spec).await.unwrap();
    start(&client, "killed").await.unwrap();
    assert_eq!(
        wait(&client, "killed").await,
        (128 + libc::SIGSYS, libc::SIGSYS)
    );
    remove(&client, "killed", 0).await.unwrap();
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_no_new_privileges_the_filter_is_loaded_before_the_user_changes() {
    let (agent, client) = TestAgent::start("sc-nnp").await;
    let script = format!("id -u; mkdir /tmp/u || echo refused; {STATUS}");
    let mut spec = with_seccomp(&agent, &["sh", "-c", &script], deny_mkdir(1));
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let (status, out, err) = run(&client, &agent, "user", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(
        out,
        "1000\nrefused\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n"
    );
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_processes_get_the_containers_filter() {
    let (agent, client) = TestAgent::start("sc-exec").await;
    let spec = with_seccomp(&agent, &["sleep", "100"], deny_mkdir(1));
    create(&client, &agent, "box", &spec).await.unwrap();
    start(&client, "box").await.unwrap();
    let script = format!("mkdir /tmp/e || echo refused; {STATUS}");
    for (exec_id, nnp) in [("nnp", true), ("privs", false)] {
        let process = json!({
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin", format!("RUNV_TEST_MARK={}", agent.mark)],
            "cwd": "/",
            "user": {"uid": 1000, "gid": 1000},
            "noNewPrivileges": nnp
        });
        exec(&client, "box", exec_id, &process).await.unwrap();
        let (out, err) = tokio::join!(
            read_exec(&client, "box", exec_id, false),
            read_exec(&client, "box", exec_id, true)
        );
        assert_eq!(wait_exec(&client, "box", exec_id).await, 0, "{err}");
        assert!(err.contains("Operation not permitted"), "stderr: {err}");
        assert_eq!(
            out,
            format!(
                "refused\nNoNewPrivs:\t{}\nSeccomp:\t2\nSeccomp_filters:\t1\n",
                u8::from(nnp)
            )
        );
    }
    remove(&client, "box", 0).await.unwrap();
    agent.assert_clean();
}

/// The syscalls a general-purpose default profile allows on x86_64 and aarch64 (plus a
/// few of other architectures, which the agent skips): everything but module loading,
/// mounts, namespaces, tracing, keyrings, clock setting, reboot, swap and similar.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "clone",
    "clone3",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// A realistic default-deny profile: ERRNO for everything the list does not allow,
/// `personality` for a few personas only, `socket` for every family but AF_VSOCK.
fn default_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ALLOWED, "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 4_294_967_295_u64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_default_deny_profile_runs_a_shell() {
    assert!(ALLOWED.len() > 340, "{}", ALLOWED.len());
    let (agent, client) = TestAgent::start("sc-default").await;
    std::fs::create_dir_all(agent.rootfs.join("mnt")).unwrap();
    let script = format!(
        "echo hello; ls / > /dev/null && echo listed; mkdir /tmp/d && echo made; \
         (sleep 0; echo child) & wait; \
         mount -t tmpfs none /mnt 2>/dev/null || echo no-mount; {STATUS}"
    );
    let spec = with_seccomp(&agent, &["sh", "-c", &script], default_profile());
    let (status, out, err) = run(&client, &agent, "shell", &spec).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(
        out,
        "hello\nlisted\nmade\nchild\nno-mount\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"
    );
    agent.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_profiles_are_refused_at_create() {
    let (agent, client) = TestAgent::start("sc-bad").await;
    let mut notify = default_profile();
    notify["syscalls"][2]["action"] = json!("SCMP_ACT_NOTIFY");
    let mut bad_index = deny_mkdir(1);
    bad_index["syscalls"][0]["args"] = json!([{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]);
    let mut listener = deny_mkdir(1);
    listener["listenerPath"] = json!("/run/seccomp-agent.sock");
    let mut errno_on_allow = deny_mkdir(1);
    errno_on_allow["defaultErrnoRet"] = json!(1);
    let mut bad_arch = deny_mkdir(1);
    bad_arch["architectures"] = json!(["SCMP_ARCH_NOPE"]);
    let cases = [
        (notify, "linux.seccomp.syscalls[2].action"),
        (bad_index, "linux.seccomp.syscalls[0].args[0].index"),
        (listener, "linux.seccomp.listenerPath"),
        (errno_on_allow, "linux.seccomp.defaultErrnoRet"),
        (bad_arch, "SCMP_ARCH_NOPE"),
    ];
    for (i, (seccomp, named)) in cases.into_iter().enumerate() {
        let spec = with_seccomp(&agent, &["true"], seccomp);
        let err = create(&client, &agent, &format!("bad{i}"), &spec)
            .await
            .unwrap_err();
        assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{}", message(&err));
        assert!(message(&err).contains(named), "{}", message(&err));
        agent.assert_clean();
    }
    // The agent goes on creating containers.
    let spec = with_seccomp(&agent, &["true"], deny_mkdir(1));
    assert_eq!(run(&client, &agent, "good", &spec).await.0, 0);
    agent.assert_clean();
}
