//! The agent configures the pod's network: run on this host in a network namespace the test
//! makes (never the host's), with a veth end whose MAC stands for the guest's NIC.

mod common;

use common::*;

/// A network namespace with a veth end in it, whose peer is in a second namespace (the
/// "bridge side"); both deleted on drop.
struct Netns {
    name: String,
    peer: String,
}

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

impl Netns {
    /// `nic` (MAC `mac`) inside; its peer (10.77.0.1/24, fd77::1/64, up) in the other one.
    fn new(tag: &str, mac: &str) -> Self {
        let name = format!("runv-nt-{}-{tag}", std::process::id());
        let peer = format!("{name}-p");
        for ns in [&name, &peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            ip(&["netns", "add", ns]);
        }
        let ns = Self { name, peer };
        ns.ip(&[
            "link", "add", "nic", "address", mac, "type", "veth", "peer", "name", "peer",
        ]);
        ns.ip(&["link", "set", "peer", "netns", &ns.peer]);
        ns.peer_ip(&["addr", "add", "10.77.0.1/24", "dev", "peer"]);
        ns.peer_ip(&["addr", "add", "fd77::1/64", "dev", "peer", "nodad"]);
        ns.peer_ip(&["link", "set", "peer", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn peer_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.peer.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.name, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

const MAC: &str = "0a:58:0a:4d:00:05";

fn pod_network() -> Network {
    Network {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: MAC.into(),
            mtu: 1400,
            addresses: vec![
                IpAddress {
                    address: "10.77.0.5".into(),
                    prefix_len: 24,
                    ..Default::default()
                },
                IpAddress {
                    address: "fd77::5".into(),
                    prefix_len: 64,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        routes: vec![
            Route {
                gateway: "10.77.0.1".into(),
                device: "eth0".into(),
                ..Default::default()
            },
            Route {
                destination: "10.99.0.0/16".into(),
                device: "eth0".into(),
                metric: 50,
                ..Default::default()
            },
            Route {
                gateway: "fd77::1".into(),
                device: "eth0".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

async fn stats(
    client: &AgentClient,
    id: &str,
) -> runv_agent_protocol::agent::StatsContainerResponse {
    let req = ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    client.stats_container(ctx(), &req).await.unwrap()
}

fn sandbox(network: Network) -> CreateSandboxRequest {
    CreateSandboxRequest {
        sandbox_id: "sb".into(),
        network: Some(network).into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_pod_network_is_applied_by_mac_and_bad_input_changes_nothing() {
    let ns = Netns::new("apply", MAC);
    let (agent, client) = TestAgent::start_in_netns("net-apply", &ns.name).await;

    // A route naming an interface the request does not have: refused by field, nothing done.
    let mut bad = pod_network();
    bad.routes[1].device = "eth1".into();
    let err = client
        .create_sandbox(ctx(), &sandbox(bad))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(
        message(&err).contains("network.routes[1].device"),
        "{}",
        message(&err)
    );
    let links = ns.ip(&["-o", "link", "show"]);
    assert!(links.contains(" nic@"), "{links}");
    assert!(!ns
        .ip(&["-o", "addr", "show", "dev", "nic"])
        .contains("10.77.0.5"));

    // A MAC no link has: NOT_FOUND naming it, after the bounded wait.
    let mut absent = pod_network();
    absent.interfaces[0].mac = "0a:58:0a:4d:00:99".into();
    let err = client
        .create_sandbox(ctx(), &sandbox(absent))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::NOT_FOUND, "{}", message(&err));
    assert!(
        message(&err).contains("0a:58:0a:4d:00:99"),
        "{}",
        message(&err)
    );

    client
        .create_sandbox(ctx(), &sandbox(pod_network()))
        .await
        .expect("CreateSandbox with the pod's network");
    let link = ns.ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(MAC), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("inet 10.77.0.5/24"), "{addrs}");
    let v6 = addrs
        .lines()
        .find(|l| l.contains("inet6 fd77::5/64"))
        .unwrap_or_else(|| panic!("no fd77::5/64: {addrs}"));
    assert!(
        v6.contains("nodad") && !v6.contains("tentative"),
        "DAD must be off: {v6}"
    );
    let routes = ns.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("10.99.0.0/16 dev eth0"), "{routes}");
    assert!(routes.contains("metric 50"), "{routes}");
    let routes6 = ns.ip(&["-6", "route", "show"]);
    assert!(
        routes6.contains("default via fd77::1 dev eth0"),
        "{routes6}"
    );

    // Traffic over eth0 shows in every container's stats.
    let spec = agent.spec(&["sleep", "30"]);
    create(&client, &agent, "c1", &spec).await.unwrap();
    start(&client, "c1").await.unwrap();
    let before = stats(&client, "c1").await;
    let eth0 = |s: &runv_agent_protocol::agent::StatsContainerResponse| {
        s.network
            .iter()
            .find(|n| n.interface == "eth0")
            .cloned()
            .expect("eth0 in the network stats")
    };
    assert!(before.network.iter().all(|n| n.interface != "lo"));
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "busybox",
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            "10.77.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let after = stats(&client, "c1").await;
    assert!(eth0(&after).tx_packets >= eth0(&before).tx_packets + 3);
    assert!(eth0(&after).rx_bytes > eth0(&before).rx_bytes);
    remove(&client, "c1", 0).await.unwrap();
    drop(client);
    drop(agent);
}

#[tokio::test]
async fn the_host_namespace_is_never_configured() {
    let (_agent, client) = TestAgent::start("net-host").await;
    let err = client
        .create_sandbox(ctx(), &sandbox(pod_network()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::FAILED_PRECONDITION);
    assert!(
        message(&err).contains("network namespace of its own"),
        "{}",
        message(&err)
    );
}
