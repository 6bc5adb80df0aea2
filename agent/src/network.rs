//! The pod's network in the guest: the runtime read the CNI interfaces off the pod's network
//! namespace and gave the VM one virtio-net device per interface, with the same MAC. Here each
//! guest link is found by that MAC, renamed, given its MTU and addresses and brought up, and
//! the routes are added — all over rtnetlink (`netlink-packet-route` messages on a
//! `netlink-sys` socket), never by running `ip`.
//!
//! Everything is validated before the first change, so bad input changes nothing and the
//! error names the field (`network.routes[2].gateway: ...`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use runv_agent_protocol::agent as pb;
use runv_netlink::netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use runv_netlink::netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use runv_netlink::netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use runv_netlink::netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use runv_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use runv_netlink::{format_mac, link_mac, link_name, Netlink};

/// How long a NIC named in the request may take to appear (the virtio-net driver probes it
/// before PID 1 runs, so this is a bound, not an expected wait).
const LINK_WAIT: Duration = Duration::from_secs(5);
/// How long a route's gateway may take to become reachable after its link came up.
const GATEWAY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request itself is wrong; `field` is its path, e.g. `network.routes[2].gateway`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// No guest link has an interface's MAC.
    #[error("network.interfaces[{index}]: no guest interface has MAC {mac} (waited {waited:?})")]
    NoLink {
        index: usize,
        mac: String,
        waited: Duration,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] runv_netlink::Error),
    /// Configuring the namespace the agent runs in would change the host's own network.
    #[error("refusing to configure the network namespace the agent shares with the process that started it (development mode: start it in a network namespace of its own)")]
    HostNamespace,
}

/// One interface, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interface {
    name: String,
    mac: [u8; 6],
    mtu: u32,
    addresses: Vec<(IpAddr, u8)>,
}

/// One route, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    device: Option<String>,
    source: Option<IpAddr>,
    metric: u32,
    v6: bool,
}

/// The network to apply, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    interfaces: Vec<Interface>,
    routes: Vec<Route>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.routes.is_empty()
    }
}

fn invalid(field: String, reason: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_ip(field: String, text: &str) -> Result<IpAddr, NetworkError> {
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IPv4 or IPv6 address")))
}

fn parse_cidr(field: String, text: &str) -> Result<(IpAddr, u8), NetworkError> {
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| invalid(field.clone(), format!("{text:?} is not ADDRESS/PREFIX")))?;
    let ip = parse_ip(field.clone(), ip)?;
    let len: u8 = len
        .parse()
        .map_err(|_| invalid(field.clone(), format!("{len:?} is not a prefix length")))?;
    if len > max_prefix(&ip) {
        return Err(invalid(
            field,
            format!("prefix length {len} is over {}", max_prefix(&ip)),
        ));
    }
    Ok((ip, len))
}

/// Checks the whole request; nothing is changed by this.
pub fn plan(network: &pb::Network) -> Result<Plan, NetworkError> {
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    let mut interfaces = Vec::new();
    for (i, iface) in network.interfaces.iter().enumerate() {
        let field = |f: &str| format!("network.interfaces[{i}].{f}");
        let name = iface.name.as_str();
        if name.is_empty()
            || name.len() > 15
            || name == "."
            || name == ".."
            || name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(invalid(
                field("name"),
                format!(
                    "{name:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"
                ),
            ));
        }
        if name == "lo" || !names.insert(name.to_string()) {
            return Err(invalid(field("name"), format!("{name:?} is used twice")));
        }
        let mac = parse_mac(&iface.mac).ok_or_else(|| {
            invalid(
                field("mac"),
                format!("{:?} is not a MAC like aa:bb:cc:dd:ee:ff", iface.mac),
            )
        })?;
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(invalid(
                field("mac"),
                format!("{} is not a unicast address", iface.mac),
            ));
        }
        if !macs.insert(mac) {
            return Err(invalid(
                field("mac"),
                format!("{} is used twice", iface.mac),
            ));
        }
        if iface.mtu != 0 && !(68..=65535).contains(&iface.mtu) {
            return Err(invalid(
                field("mtu"),
                format!("{} is outside 68..=65535", iface.mtu),
            ));
        }
        let mut addresses = Vec::new();
        for (j, a) in iface.addresses.iter().enumerate() {
            let field = format!("network.interfaces[{i}].addresses[{j}]");
            let ip = parse_ip(format!("{field}.address"), &a.address)?;
            let len = u8::try_from(a.prefix_len)
                .ok()
                .filter(|len| *len <= max_prefix(&ip))
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.prefix_len"),
                        format!("{} is over {} for {ip}", a.prefix_len, max_prefix(&ip)),
                    )
                })?;
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(invalid(
                    format!("{field}.address"),
                    format!("{ip} cannot be an interface address"),
                ));
            }
            addresses.push((ip, len));
        }
        interfaces.push(Interface {
            name: name.to_string(),
            mac,
            mtu: iface.mtu,
            addresses,
        });
    }
    let mut routes = Vec::new();
    for (i, r) in network.routes.iter().enumerate() {
        let field = |f: &str| format!("network.routes[{i}].{f}");
        let destination = if r.destination.is_empty() {
            None
        } else {
            Some(parse_cidr(field("destination"), &r.destination)?)
        };
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            Some(parse_ip(field("gateway"), &r.gateway)?)
        };
        let source = if r.source.is_empty() {
            None
        } else {
            Some(parse_ip(field("source"), &r.source)?)
        };
        let device = if r.device.is_empty() {
            None
        } else if names.contains(&r.device) {
            Some(r.device.clone())
        } else {
            return Err(invalid(
                field("device"),
                format!("{:?} is not one of the interfaces", r.device),
            ));
        };
        let v6 = match (destination, gateway, r.family) {
            (Some((ip, _)), _, _) | (None, Some(ip), _) => ip.is_ipv6(),
            (None, None, 4) => false,
            (None, None, 6) => true,
            (None, None, other) => {
                return Err(invalid(
                    field("family"),
                    format!("{other} is not 4 or 6 (needed for a default route without a gateway)"),
                ))
            }
        };
        for (name, ip) in [("gateway", gateway), ("source", source)] {
            if let Some(ip) = ip {
                if ip.is_ipv6() != v6 {
                    return Err(invalid(
                        field(name),
                        format!("{ip} is not of the route's family"),
                    ));
                }
            }
        }
        if r.family != 0 && (r.family == 6) != v6 {
            return Err(invalid(
                field("family"),
                format!("{} contradicts the route's addresses", r.family),
            ));
        }
        if gateway.is_none() && device.is_none() {
            return Err(invalid(
                field("device"),
                "a route without a gateway needs a device",
            ));
        }
        routes.push(Route {
            destination,
            gateway,
            device,
            source,
            metric: r.metric,
            v6,
        });
    }
    Ok(Plan { interfaces, routes })
}

/// Whether the agent (in development mode on a host) shares its network namespace with the
/// process that started it, so configuring it would change a network that is not the
/// agent's own. It must be started in a namespace made for it (e.g. `ip netns exec`); when
/// the answer cannot be known, it is yes.
pub fn in_host_namespace() -> bool {
    let parent = nix::unistd::getppid();
    match (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link(format!("/proc/{parent}/ns/net")),
    ) {
        (Ok(mine), Ok(theirs)) => mine == theirs,
        _ => true,
    }
}

/// Applies a checked plan: links (found by MAC, waiting up to [`LINK_WAIT`] for them), then
/// routes.
pub fn apply(plan: &Plan) -> Result<(), NetworkError> {
    if plan.is_empty() {
        return Ok(());
    }
    let mut netlink = Netlink::open()?;
    let start = Instant::now();
    let mut indexes = std::collections::HashMap::new();
    for (i, iface) in plan.interfaces.iter().enumerate() {
        let index = loop {
            let found = netlink
                .links()?
                .into_iter()
                .find(|l| link_mac(l) == Some(&iface.mac[..]))
                .map(|l| l.header.index);
            if let Some(index) = found {
                break index;
            }
            if start.elapsed() > LINK_WAIT {
                return Err(NetworkError::NoLink {
                    index: i,
                    mac: format_mac(&iface.mac),
                    waited: LINK_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        configure_link(&mut netlink, index, iface)?;
        indexes.insert(iface.name.clone(), index);
        tracing::info!(
            interface = %iface.name,
            mac = %format_mac(&iface.mac),
            mtu = iface.mtu,
            addresses = iface.addresses.len(),
            "interface up"
        );
    }
    for (i, route) in plan.routes.iter().enumerate() {
        add_route(&mut netlink, i, route, &indexes)?;
    }
    Ok(())
}

fn configure_link(
    netlink: &mut Netlink,
    index: u32,
    iface: &Interface,
) -> Result<(), NetworkError> {
    // A link is renamed while down.
    let mut down = LinkMessage::default();
    down.header.index = index;
    down.header.change_mask = LinkFlags::Up;
    netlink.request(
        &format!("set {} down", iface.name),
        RouteNetlinkMessage::SetLink(down),
        0,
    )?;
    let mut set = LinkMessage::default();
    set.header.index = index;
    set.attributes
        .push(LinkAttribute::IfName(iface.name.clone()));
    if iface.mtu != 0 {
        set.attributes.push(LinkAttribute::Mtu(iface.mtu));
    }
    netlink.request(
        &format!("rename link {index} to {} (mtu {})", iface.name, iface.mtu),
        RouteNetlinkMessage::SetLink(set),
        0,
    )?;
    for (ip, len) in &iface.addresses {
        let mut address = AddressMessage::default();
        address.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        address.header.prefix_len = *len;
        address.header.index = index;
        address.attributes.push(AddressAttribute::Address(*ip));
        if ip.is_ipv4() {
            address.attributes.push(AddressAttribute::Local(*ip));
        } else {
            // The pod's address is known to be its own: usable at once, no duplicate
            // detection delay.
            address
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        netlink.request(
            &format!("add {ip}/{len} to {}", iface.name),
            RouteNetlinkMessage::NewAddress(address),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
    }
    let mut up = LinkMessage::default();
    up.header.index = index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    netlink.request(
        &format!("set {} up", iface.name),
        RouteNetlinkMessage::SetLink(up),
        0,
    )?;
    Ok(())
}

fn add_route(
    netlink: &mut Netlink,
    i: usize,
    route: &Route,
    indexes: &std::collections::HashMap<String, u32>,
) -> Result<(), NetworkError> {
    let mut message = RouteMessage::default();
    message.header.address_family = if route.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.kind = RouteType::Unicast;
    message.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if let Some((ip, len)) = route.destination {
        message.header.destination_prefix_length = len;
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    if let Some(device) = &route.device {
        if let Some(index) = indexes.get(device) {
            message.attributes.push(RouteAttribute::Oif(*index));
        }
    }
    if let Some(source) = route.source {
        message
            .attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(source)));
    }
    if route.metric != 0 {
        message
            .attributes
            .push(RouteAttribute::Priority(route.metric));
    }
    let shown = route
        .destination
        .map(|(ip, len)| format!("{ip}/{len}"))
        .unwrap_or_else(|| "default".to_string());
    // REPLACE: a route the kernel made itself for an address's prefix may be asked for again.
    // A gateway is accepted once the kernel has the on-link route of its prefix, which for
    // IPv6 it adds a moment after the link comes up: until then the answer is EINVAL or
    // ENETUNREACH, retried for a bounded time.
    let what = format!("network.routes[{i}]: add route {shown}");
    let start = Instant::now();
    loop {
        match netlink.request(
            &what,
            RouteNetlinkMessage::NewRoute(message.clone()),
            NLM_F_CREATE | NLM_F_REPLACE,
        ) {
            Ok(_) => break,
            Err(runv_netlink::Error { source, .. })
                if route.gateway.is_some()
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::EINVAL | libc::ENETUNREACH | libc::EHOSTUNREACH)
                    )
                    && start.elapsed() < GATEWAY_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(route = %shown, gateway = ?route.gateway, device = ?route.device, "route added");
    Ok(())
}

/// Counters of every interface but loopback, from the links' 64-bit statistics.
pub fn stats() -> Result<Vec<pb::NetworkStats>, NetworkError> {
    let mut netlink = Netlink::open()?;
    let mut out = Vec::new();
    for link in netlink.links()? {
        let Some(name) = link_name(&link) else {
            continue;
        };
        if name == "lo" {
            continue;
        }
        let Some(s) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(s),
            _ => None,
        }) else {
            continue;
        };
        out.push(pb::NetworkStats {
            interface: name.to_string(),
            rx_bytes: s.rx_bytes,
            rx_packets: s.rx_packets,
            rx_errors: s.rx_errors,
            rx_dropped: s.rx_dropped,
            tx_bytes: s.tx_bytes,
            tx_packets: s.tx_packets,
            tx_errors: s.tx_errors,
            tx_dropped: s.tx_dropped,
            ..Default::default()
        });
    }
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, mac: &str) -> pb::Interface {
        pb::Interface {
            name: name.into(),
            mac: mac.into(),
            mtu: 1400,
            addresses: vec![pb::IpAddress {
                address: "10.88.0.5".into(),
                prefix_len: 16,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn route(destination: &str, gateway: &str, device: &str) -> pb::Route {
        pb::Route {
            destination: destination.into(),
            gateway: gateway.into(),
            device: device.into(),
            ..Default::default()
        }
    }

    fn err(network: &pb::Network) -> String {
        plan(network).unwrap_err().to_string()
    }

    #[test]
    fn a_pod_network_is_planned() {
        let network = pb::Network {
            interfaces: vec![iface("eth0", "0a:58:0a:58:00:05")],
            routes: vec![
                route("", "10.88.0.1", "eth0"),
                route("fd00::/64", "", "eth0"),
            ],
            ..Default::default()
        };
        let plan = plan(&network).unwrap();
        assert_eq!(plan.interfaces[0].mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        assert!(!plan.routes[0].v6);
        assert!(plan.routes[1].v6);
        assert_eq!(plan.routes[1].destination.unwrap().1, 64);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut bad_mac = iface("eth0", "0a:58:0a:58:00");
        let net = |i: Vec<pb::Interface>, r: Vec<pb::Route>| pb::Network {
            interfaces: i,
            routes: r,
            ..Default::default()
        };
        assert!(err(&net(vec![bad_mac.clone()], vec![])).starts_with("network.interfaces[0].mac:"));
        bad_mac.mac = "01:00:00:00:00:01".into();
        assert!(err(&net(vec![bad_mac], vec![])).contains("not a unicast"));
        let mut long = iface("a-very-long-interface", "0a:00:00:00:00:01");
        assert!(err(&net(vec![long.clone()], vec![])).starts_with("network.interfaces[0].name:"));
        long.name = "eth0".into();
        long.addresses[0].prefix_len = 33;
        assert!(err(&net(vec![long], vec![]))
            .starts_with("network.interfaces[0].addresses[0].prefix_len:"));
        let ok = iface("eth0", "0a:00:00:00:00:01");
        let twice = iface("eth0", "0a:00:00:00:00:02");
        assert!(err(&net(vec![ok.clone(), twice], vec![])).contains("used twice"));
        assert!(
            err(&net(vec![ok.clone()], vec![route("", "10.0.0.1", "eth1")]))
                .starts_with("network.routes[0].device:")
        );
        assert!(err(&net(vec![ok.clone()], vec![route("", "nope", "eth0")]))
            .starts_with("network.routes[0].gateway:"));
        assert!(err(&net(
            vec![ok.clone()],
            vec![route("10.0.0.0/16", "fd00::1", "eth0")]
        ))
        .starts_with("network.routes[0].gateway:"));
        assert!(err(&net(vec![ok.clone()], vec![route("", "", "eth0")]))
            .starts_with("network.routes[0].family:"));
        assert!(err(&net(vec![ok], vec![route("10.0.0.0/16", "", "")]))
            .starts_with("network.routes[0].device:"));
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("0A:58:0a:58:00:ff").unwrap();
        assert_eq!(format_mac(&mac), "0a:58:0a:58:00:ff");
        assert!(parse_mac("0a:58:0a:58:00:ff:00").is_none());
        assert!(parse_mac("0a:58:0a:58:0:ff").is_none());
    }
}
