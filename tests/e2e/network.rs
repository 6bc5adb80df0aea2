//! Pod networking end to end: CNI's bridge plugin puts a veth in a pod namespace, `runv run
//! --netns` carries it into the VM (tap + tc redirects + virtio-net), and the container has
//! the pod's address, MAC, MTU and routes, talks to a peer on the bridge both ways, and leaves
//! no tap or tc state behind, also when its hypervisor is killed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runv_tests::cni::{ip_in, tc_in, Bridge};
use runv_tests::*;

const LIMIT: Duration = Duration::from_secs(90);

fn root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: runv run needs root");
    }
    root
}

/// Nothing of runv is left in the pod's namespace: no tap, no ingress qdisc; the veth stays.
fn assert_no_plumbing(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let links = ip_in(netns, &["-o", "link", "show"]);
        let qdiscs = tc_in(netns, &["qdisc", "show"]);
        let clean = !links.contains("_rv") && !qdiscs.contains("ingress");
        if clean {
            assert!(links.contains("eth0@"), "the CNI veth must stay: {links}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "runv's plumbing left in {netns}: {links}\n{qdiscs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_container_has_the_pods_address_and_talks_both_ways() {
    if !root() {
        return;
    }
    let mut bridge = Bridge::new(1400);
    let pod = bridge.add_pod("pod");
    let peer = bridge.add_pod("peer");
    let netns = pod.path().display().to_string();
    let name = unique_name("net");

    // (a) eth0 as CNI made it, and (b) the container reaches a server on the bridge.
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &peer.netns,
            "busybox",
            "nc",
            "-l",
            "-p",
            "18080",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("peer server");
    let script = format!(
        "ip -o link show eth0; ip -o addr show dev eth0; ip route; \
         echo hello-from-the-pod | nc {} 18080 && echo sent",
        peer.address
    );
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &["--netns", &netns, "--", "sh", "-c", &script],
            None,
            LIMIT,
        )
    });
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains(&format!("inet {}/24", pod.address)), "{text}");
    assert!(
        text.contains(&pod.mac),
        "the guest has the veth's MAC: {text}"
    );
    assert!(text.contains("mtu 1400"), "{text}");
    assert!(
        text.contains(&format!("default via {} dev eth0", bridge.gateway())),
        "{text}"
    );
    assert!(text.contains("sent"), "{text}");
    let mut received = String::new();
    let mut server = server;
    server
        .stdout
        .take()
        .expect("server stdout")
        .read_to_string(&mut received)
        .unwrap();
    let _ = server.wait();
    assert_eq!(received.trim(), "hello-from-the-pod");
    assert_no_plumbing(&pod.netns);

    // A server in the container is reachable from the peer.
    let name = unique_name("net-srv");
    let mut cmd = runv();
    cmd.args([
        "run", "--rm", "--name", &name, "--netns", &netns, "--", "nc", "-l", "-p", "8080",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runv run");
    let deadline = Instant::now() + LIMIT;
    loop {
        let sent = Command::new("ip")
            .args(["netns", "exec", &peer.netns, "sh", "-c"])
            .arg(format!(
                "echo hello-from-the-peer | busybox nc -w 2 {} 8080",
                pod.address
            ))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("runv run ended ({status}) before the peer reached it");
        }
        assert!(
            Instant::now() < deadline,
            "the container's server never answered"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("runv run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "hello-from-the-peer");
    assert_no_leaks(&name);
    assert_no_plumbing(&pod.netns);
}

#[test]
fn a_killed_hypervisor_leaves_no_tap_or_filter() {
    if !root() {
        return;
    }
    let mut bridge = Bridge::new(1500);
    let pod = bridge.add_pod("kill");
    let netns = pod.path().display().to_string();
    let name = unique_name("net-kill");
    let mut cmd = runv();
    cmd.args([
        "run", "--rm", "--name", &name, "--netns", &netns, "--", "sleep", "600",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runv run");
    wait_until_started(&name, &mut child, LIMIT);
    assert!(ip_in(&pod.netns, &["-o", "link", "show"]).contains("eth0_rv"));
    assert!(tc_in(&pod.netns, &["filter", "show", "dev", "eth0", "ingress"]).contains("mirred"));
    let qemu = processes_mentioning(&format!("runv-{name},"));
    let pid: i32 = qemu
        .first()
        .and_then(|p| p.split(':').next()?.parse().ok())
        .expect("the sandbox's qemu");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().expect("runv run");
    assert!(!out.status.success());
    assert_no_leaks(&name);
    assert_no_plumbing(&pod.netns);
}

#[test]
fn no_network_is_loopback_only_and_a_bad_namespace_is_refused() {
    if !root() {
        return;
    }
    let name = unique_name("net-none");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &["--net", "none", "--", "ip", "-o", "link"],
            None,
            LIMIT,
        )
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let links = stdout(&out);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"), "{links}");

    let name = unique_name("net-bad");
    let out = with_leak_check(&name, || {
        run_container(
            &name,
            &["--netns", "/run/netns/runv-no-such-ns", "--", "true"],
            None,
            LIMIT,
        )
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/run/netns/runv-no-such-ns"),
        "{}",
        stderr(&out)
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    let name = unique_name("net-file");
    let path = file.path().display().to_string();
    let out = with_leak_check(&name, || {
        run_container(&name, &["--netns", &path, "--", "true"], None, LIMIT)
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a namespace file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ctr_run_with_the_pods_namespace_gets_its_network_through_the_shim() {
    if !root() {
        return;
    }
    let mut bridge = Bridge::new(1500);
    let pod = bridge.add_pod("ctr");
    let containerd = runv_tests::containerd::Containerd::start();
    containerd.import_busybox();
    let with_ns = format!("network:{}", pod.path().display());
    let out = containerd.ctr(
        &[
            "run",
            "--runtime",
            runv_tests::containerd::RUNV_RUNTIME,
            "--rm",
            "--with-ns",
            &with_ns,
            runv_tests::containerd::BUSYBOX_IMAGE,
            "net-ctr",
            "sh",
            "-c",
            &format!(
                "ip -o addr show dev eth0; nc -w 5 {} 1 </dev/null; echo done",
                bridge.gateway()
            ),
        ],
        LIMIT,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains(&format!("inet {}/24", pod.address)), "{text}");
    assert!(text.contains("done"), "{text}");
    assert_no_plumbing(&pod.netns);
}

#[test]
fn a_cri_pod_gets_its_cni_address_in_the_guest() {
    use runv_tests::containerd::{Containerd, BUSYBOX_IMAGE, RUNV_HANDLER};
    use runv_tests::cri;
    if !root() {
        return;
    }
    let bridge = Bridge::new(1500);
    let containerd = Containerd::start_cri();
    bridge.install_for_cri(
        &containerd.dir().join("cni/conf"),
        &containerd.dir().join("cni/bin"),
    );
    let mut client = containerd.cri();
    let name = unique_name("cri-net");
    let log_dir = containerd.dir().join("pods").join(&name);
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut pod_config = cri::host_network_pod(&name, &log_dir, &containerd.cgroup_parent());
    let pod_network = |options: &mut Option<cri::v1::NamespaceOption>| {
        if let Some(options) = options {
            options.network = cri::v1::NamespaceMode::Pod.into();
        }
    };
    if let Some(linux) = pod_config.linux.as_mut() {
        if let Some(ctx) = linux.security_context.as_mut() {
            pod_network(&mut ctx.namespace_options);
        }
    }
    // The CRI plugin picks the CNI configuration up from its directory a moment after it
    // appears.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pod = loop {
        match client.run_pod_sandbox(&pod_config, RUNV_HANDLER) {
            Ok(pod) => break pod,
            Err(e) if e.message().contains("cni") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("RunPodSandbox: {e}\n{}", containerd.log()),
        }
    };
    let status = client.pod_sandbox_status(&pod).expect("PodSandboxStatus");
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        pod_ip.starts_with(&bridge.subnet_prefix),
        "pod IP {pod_ip:?} not from {}.0/24",
        bridge.subnet_prefix
    );

    let listener = Command::new("busybox")
        .args(["nc", "-l", "-p", "18090"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("host server");
    let mut config = cri::container("app", BUSYBOX_IMAGE, &["sleep", "3600"]);
    if let Some(linux) = config.linux.as_mut() {
        if let Some(ctx) = linux.security_context.as_mut() {
            pod_network(&mut ctx.namespace_options);
        }
    }
    let id = client
        .create_container(&pod, &config, &pod_config)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", containerd.log()));
    client.start_container(&id).expect("StartContainer");
    let script = format!(
        "ip -o addr show dev eth0; echo hello-from-the-cri-pod | nc {} 18090",
        bridge.gateway()
    );
    let out = client
        .exec_sync(&id, &["sh", "-c", &script], 60)
        .expect("ExecSync");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.exit_code,
        0,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("inet {pod_ip}/24")), "{text}");
    let mut received = String::new();
    let mut listener = listener;
    listener
        .stdout
        .take()
        .expect("server stdout")
        .read_to_string(&mut received)
        .unwrap();
    let _ = listener.wait();
    assert_eq!(received.trim(), "hello-from-the-cri-pod");
    client.remove_everything();
}
