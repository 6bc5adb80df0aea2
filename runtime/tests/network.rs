//! The pod network's host side on real namespaces (as root): a veth as a CNI bridge plugin
//! leaves it, the tap and tc redirects runv adds beside it, and their removal.

use std::path::PathBuf;
use std::process::Command;

use runv_runtime::network::{self, NetworkError};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tc(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod namespace with `eth0` (10.66.0.5/24, fd66::5/64, MTU 1400, a default route and one
/// more) whose peer sits in a second namespace; both deleted on drop.
struct Pod {
    name: String,
    peer: String,
}

impl Pod {
    fn new(tag: &str, with_veth: bool) -> Self {
        let name = format!("runv-rt-{}-{tag}", std::process::id());
        let peer = format!("{name}-p");
        for ns in [&name, &peer] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
            ip(&["netns", "add", ns]);
        }
        let pod = Self { name, peer };
        if with_veth {
            let n = pod.name.as_str();
            ip(&[
                "-n",
                n,
                "link",
                "add",
                "eth0",
                "address",
                "0a:58:0a:42:00:05",
                "mtu",
                "1400",
                "type",
                "veth",
                "peer",
                "name",
                "br0",
            ]);
            ip(&["-n", n, "link", "set", "br0", "netns", &pod.peer]);
            ip(&["-n", n, "addr", "add", "10.66.0.5/24", "dev", "eth0"]);
            ip(&["-n", n, "addr", "add", "fd66::5/64", "dev", "eth0", "nodad"]);
            ip(&["-n", n, "link", "set", "eth0", "up"]);
            ip(&["-n", &pod.peer, "link", "set", "br0", "up"]);
            ip(&[
                "-n",
                n,
                "route",
                "add",
                "default",
                "via",
                "10.66.0.1",
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                n,
                "route",
                "add",
                "10.200.0.0/16",
                "via",
                "10.66.0.1",
                "dev",
                "eth0",
                "metric",
                "7",
            ]);
        }
        pod
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for ns in [&self.name, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_tap_is_plumbed_beside_the_veth_and_removed_again() {
    let pod = Pod::new("plumb", true);
    let net = network::setup(&pod.path()).expect("setup");

    // What the guest is told: the veth's MAC, MTU, global addresses and routes.
    assert_eq!(net.guest.interfaces.len(), 1);
    let eth0 = &net.guest.interfaces[0];
    assert_eq!(
        (eth0.name.as_str(), eth0.mac.as_str(), eth0.mtu),
        ("eth0", "0a:58:0a:42:00:05", 1400)
    );
    let addrs: Vec<String> = eth0
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix_len))
        .collect();
    assert!(addrs.contains(&"10.66.0.5/24".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"fd66::5/64".to_string()), "{addrs:?}");
    assert!(!addrs.iter().any(|a| a.starts_with("fe80")), "{addrs:?}");
    let routes: Vec<String> = net
        .guest
        .routes
        .iter()
        .map(|r| format!("{}|{}|{}|{}", r.destination, r.gateway, r.device, r.metric))
        .collect();
    assert!(
        routes.contains(&"|10.66.0.1|eth0|0".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"10.200.0.0/16|10.66.0.1|eth0|7".to_string()),
        "{routes:?}"
    );
    assert!(
        !routes.iter().any(|r| r.starts_with("10.66.0.0/24")),
        "kernel routes stay out: {routes:?}"
    );

    // The tap, up with the veth's MTU, and a redirect each way.
    assert_eq!(net.nics.len(), 1);
    assert_eq!(net.nics[0].tap_name, "eth0_rv");
    assert_eq!(net.nics[0].mac, "0a:58:0a:42:00:05");
    let tap = ip(&["-n", &pod.name, "-o", "link", "show", "eth0_rv"]);
    assert!(tap.contains("mtu 1400"), "{tap}");
    assert!(tap.contains(",UP"), "{tap}");
    let from_veth = tc(&pod.name, &["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        from_veth.contains("Egress Redirect to device eth0_rv"),
        "{from_veth}"
    );
    let from_tap = tc(&pod.name, &["filter", "show", "dev", "eth0_rv", "ingress"]);
    assert!(
        from_tap.contains("Egress Redirect to device eth0"),
        "{from_tap}"
    );

    // The tap goes with its last descriptor; teardown takes the veth's qdisc.
    let plumbed = net.plumbed.clone();
    drop(net);
    let links = ip(&["-n", &pod.name, "-o", "link", "show"]);
    assert!(!links.contains("eth0_rv"), "{links}");
    network::teardown(&pod.path(), &plumbed).expect("teardown");
    let qdiscs = tc(&pod.name, &["qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert!(
        ip(&["-n", &pod.name, "-o", "link", "show"]).contains("eth0@"),
        "the veth stays"
    );
    // Again: nothing left is no error.
    network::teardown(&pod.path(), &plumbed).expect("second teardown");
}

#[test]
fn a_namespace_with_only_loopback_is_refused_and_left_alone() {
    let pod = Pod::new("empty", false);
    let err = network::setup(&pod.path()).unwrap_err();
    assert!(
        matches!(
            err,
            NetworkError::Namespace { .. } | NetworkError::NoInterface { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no interface"), "{err}");
    assert!(err.to_string().contains(&pod.name), "{err}");
    let links = ip(&["-n", &pod.name, "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "{links}");
}
