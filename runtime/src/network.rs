//! The pod's network on the host: what the CNI plugin set up in the pod's network namespace
//! (a veth with addresses and routes), and the plumbing that carries it into the VM — a tap
//! beside each veth, joined to it both ways by tc (an ingress qdisc on each, a match-all `u32`
//! filter whose `mirred` action redirects every frame to the other's egress). The tap is
//! opened here and handed to the hypervisor as virtio-net with the veth's MAC; the guest's
//! agent configures its side from the [`pb::Network`] read off the veth.
//!
//! Everything is done over rtnetlink (`netlink-packet-route` messages on a `netlink-sys`
//! socket) from a short-lived thread that has entered the namespace; no `ip` or `tc` runs.
//! The taps are not persistent: they vanish with the last open descriptor, so a killed
//! hypervisor takes its tap along. [`teardown`] removes the rest (the veth's ingress qdisc
//! and its filter); the veth and the namespace stay the CNI plugin's.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use runv_agent_protocol::agent as pb;
use runv_netlink::netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use runv_netlink::netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use runv_netlink::netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use runv_netlink::netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use runv_netlink::netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use runv_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use runv_netlink::{format_mac, link_name, Netlink};
use serde::{Deserialize, Serialize};

/// What runv appends to a veth's name for its tap (kept within IFNAMSIZ).
const TAP_SUFFIX: &str = "_rv";
/// The priority of runv's redirect filter in an ingress qdisc.
const FILTER_PRIORITY: u16 = 1;
/// ETH_P_ALL.
const ETH_P_ALL: u16 = 0x0003;

/// Errors of the pod network's setup and teardown.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace path is missing, not a network namespace, or cannot be entered.
    #[error("network namespace {}: {reason}", path.display())]
    Namespace {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The namespace has nothing but loopback.
    #[error("network namespace {}: no interface to give the pod (only loopback)", path.display())]
    NoInterface {
        /// The path given.
        path: PathBuf,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] runv_netlink::Error),
    /// A tap could not be made.
    #[error("tap {name}: {what}: {source}")]
    Tap {
        /// Its name.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// What [`teardown`] needs of one interface: saved in the sandbox state, so a later cleanup
/// can undo the plumbing of a sandbox whose owner died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plumbed {
    /// The CNI interface (its ingress qdisc is runv's).
    pub veth: String,
    /// runv's tap beside it.
    pub tap: String,
}

/// One interface handed to the VM.
#[derive(Debug)]
pub struct VmNic {
    /// The open tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
    pub tap: OwnedFd,
    /// Its name in the pod's namespace.
    pub tap_name: String,
    /// The veth's MAC, which the virtio-net device takes.
    pub mac: String,
    /// The veth's MTU.
    pub mtu: u32,
}

/// The pod's network, plumbed.
#[derive(Debug)]
pub struct PodNetwork {
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The VM's interfaces.
    pub nics: Vec<VmNic>,
    /// What [`teardown`] undoes.
    pub plumbed: Vec<Plumbed>,
    /// What the agent applies in the guest.
    pub guest: pb::Network,
}

/// The requests the pod network's plumbing makes, on runv's netlink socket.
trait Plumbing {
    fn addresses(&mut self) -> Result<Vec<AddressMessage>, NetworkError>;
    fn routes(&mut self, family: AddressFamily) -> Result<Vec<RouteMessage>, NetworkError>;
    fn add_ingress(&mut self, index: u32, name: &str) -> Result<(), NetworkError>;
    fn del_ingress(&mut self, index: u32, name: &str) -> Result<(), NetworkError>;
    fn add_redirect(&mut self, from: u32, to: u32, what: &str) -> Result<(), NetworkError>;
    fn set_link(&mut self, index: u32, name: &str, mtu: u32, up: bool) -> Result<(), NetworkError>;
}

/// The ingress qdisc of link `index` (`tc qdisc ... dev X ingress`).
fn ingress_qdisc(index: u32) -> TcMessage {
    let mut qdisc = TcMessage::default();
    qdisc.header.index = i32::try_from(index).unwrap_or_default();
    qdisc.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc
}

impl Plumbing for Netlink {
    fn addresses(&mut self) -> Result<Vec<AddressMessage>, NetworkError> {
        Ok(self
            .request(
                "list addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect())
    }

    fn routes(&mut self, family: AddressFamily) -> Result<Vec<RouteMessage>, NetworkError> {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        Ok(self
            .request(
                "list routes",
                RouteNetlinkMessage::GetRoute(query),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// An ingress qdisc on link `index` (`tc qdisc add dev X ingress`).
    fn add_ingress(&mut self, index: u32, name: &str) -> Result<(), NetworkError> {
        let mut qdisc = ingress_qdisc(index);
        qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            &format!("add an ingress qdisc to {name}"),
            RouteNetlinkMessage::NewQueueDiscipline(qdisc),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Deletes the ingress qdisc of link `index` and with it its filters.
    fn del_ingress(&mut self, index: u32, name: &str) -> Result<(), NetworkError> {
        let qdisc = ingress_qdisc(index);
        self.request(
            &format!("delete the ingress qdisc of {name}"),
            RouteNetlinkMessage::DelQueueDiscipline(qdisc),
            0,
        )?;
        Ok(())
    }

    /// Every frame arriving at `from` leaves through `to` (`tc filter add dev FROM parent
    /// ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev TO`).
    fn add_redirect(&mut self, from: u32, to: u32, what: &str) -> Result<(), NetworkError> {
        let mut filter = TcMessage::default();
        filter.header.index = i32::try_from(from).unwrap_or_default();
        filter.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        filter.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut mirror = TcMirror::default();
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.tab = 1;
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        filter.attributes = vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        self.request(
            what,
            RouteNetlinkMessage::NewTrafficFilter(filter),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn set_link(&mut self, index: u32, name: &str, mtu: u32, up: bool) -> Result<(), NetworkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        if up {
            link.header.flags = LinkFlags::Up;
            link.header.change_mask = LinkFlags::Up;
        }
        if mtu != 0 {
            link.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(
            &format!("set {name} up with mtu {mtu}"),
            RouteNetlinkMessage::SetLink(link),
            0,
        )?;
        Ok(())
    }
}

fn link_mac(link: &LinkMessage) -> Option<String> {
    runv_netlink::link_mac(link)
        .filter(|mac| mac.len() == 6)
        .map(format_mac)
}

fn link_mtu(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(0)
}

/// The tap name for veth `veth`: within 15 characters, ending in [`TAP_SUFFIX`].
pub fn tap_name(veth: &str) -> String {
    let room = 15 - TAP_SUFFIX.len();
    let base: String = veth.chars().take(room).collect();
    format!("{base}{TAP_SUFFIX}")
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The routes the guest needs of the main table: not those the kernel makes itself for an
/// address (`proto kernel`), not link-local or multicast ones, only via the pod's interfaces.
fn guest_routes(routes: &[RouteMessage], names: &HashMap<u32, String>) -> Vec<pb::Route> {
    let mut out = Vec::new();
    for r in routes {
        let h = &r.header;
        if h.table != RouteHeader::RT_TABLE_MAIN
            || h.protocol == RouteProtocol::Kernel
            || h.kind != RouteType::Unicast
        {
            continue;
        }
        let mut route = pb::Route::default();
        let mut device = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => {
                    if let Some(ip) = route_ip(d) {
                        route.destination = format!("{ip}/{}", h.destination_prefix_length);
                    }
                }
                RouteAttribute::Gateway(g) => {
                    if let Some(ip) = route_ip(g) {
                        route.gateway = ip.to_string();
                    }
                }
                RouteAttribute::PrefSource(s) => {
                    if let Some(ip) = route_ip(s) {
                        route.source = ip.to_string();
                    }
                }
                RouteAttribute::Oif(index) => device = names.get(index).cloned(),
                RouteAttribute::Priority(metric) => route.metric = *metric,
                _ => {}
            }
        }
        let Some(device) = device else {
            continue;
        };
        let link_local_or_multicast = route
            .destination
            .split('/')
            .next()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| match ip {
                IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80 || v6.is_multicast(),
                IpAddr::V4(v4) => v4.is_multicast(),
            });
        if link_local_or_multicast {
            continue;
        }
        route.device = device;
        route.family = if h.address_family == AddressFamily::Inet6 {
            6
        } else {
            4
        };
        out.push(route);
    }
    out
}

/// Opens a new, non-persistent tap named `name` in the calling thread's network namespace.
fn open_tap(name: &str) -> Result<File, NetworkError> {
    const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let tap_err = |what, source| NetworkError::Tap {
        name: name.to_string(),
        what,
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| tap_err("open /dev/net/tun", e))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(tap_err(
            "name",
            std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        ));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as; the fd is ours.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(tap_err("TUNSETIFF", std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Runs `f` on a thread that has entered the network namespace at `path`; the caller's own
/// threads never change namespace.
fn in_namespace<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    let ns_err = |reason: String| NetworkError::Namespace {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| ns_err(e.to_string()))?;
    let stat = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| ns_err(e.to_string()))?;
    if stat.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(ns_err("not a namespace file (nsfs)".into()));
    }
    let path_buf = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("runv-netns".into())
        .spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetworkError::Namespace {
                    path: path_buf,
                    reason: format!("setns: {e} (is it a network namespace?)"),
                }
            })?;
            f()
        })
        .map_err(|e| ns_err(format!("spawn a thread: {e}")))?;
    handle
        .join()
        .unwrap_or_else(|_| Err(ns_err("the namespace thread panicked".into())))
}

/// Reads the pod's interfaces in `netns`, plumbs a tap beside each, and returns them with
/// the network the guest is to apply. On an error nothing is left behind.
pub fn setup(netns: &Path) -> Result<PodNetwork, NetworkError> {
    let path = netns.to_path_buf();
    let result = in_namespace(netns, move || {
        let mut netlink = Netlink::open()?;
        let links = netlink.links()?;
        let names: HashMap<u32, String> = links
            .iter()
            .filter_map(|l| Some((l.header.index, link_name(l)?.to_string())))
            .collect();
        let pod_links: Vec<&LinkMessage> = links
            .iter()
            .filter(|l| {
                link_name(l).is_some_and(|n| n != "lo" && !n.ends_with(TAP_SUFFIX))
                    && link_mac(l).is_some()
            })
            .collect();
        if pod_links.is_empty() {
            return Err(NetworkError::NoInterface { path: path.clone() });
        }
        let addresses = netlink.addresses()?;
        let mut routes = netlink.routes(AddressFamily::Inet)?;
        routes.extend(netlink.routes(AddressFamily::Inet6)?);
        let mut network = PodNetwork {
            netns: path.clone(),
            nics: Vec::new(),
            plumbed: Vec::new(),
            guest: pb::Network::default(),
        };
        for link in pod_links {
            let veth = link_name(link).unwrap_or_default().to_string();
            let mac = link_mac(link).unwrap_or_default();
            let mtu = link_mtu(link);
            let mut iface = pb::Interface {
                name: veth.clone(),
                mac: mac.clone(),
                mtu,
                ..Default::default()
            };
            for a in addresses
                .iter()
                .filter(|a| a.header.index == link.header.index)
                .filter(|a| a.header.scope == AddressScope::Universe)
            {
                let ip = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = ip {
                    iface.addresses.push(pb::IpAddress {
                        address: ip.to_string(),
                        prefix_len: u32::from(a.header.prefix_len),
                        ..Default::default()
                    });
                }
            }
            network.guest.interfaces.push(iface);
            let tap = plumb(&mut netlink, link.header.index, &veth, mtu);
            match tap {
                Ok((file, tap_name)) => {
                    network.plumbed.push(Plumbed {
                        veth: veth.clone(),
                        tap: tap_name.clone(),
                    });
                    network.nics.push(VmNic {
                        tap: OwnedFd::from(file),
                        tap_name,
                        mac,
                        mtu,
                    });
                }
                Err(e) => {
                    undo(&mut netlink, &network.plumbed);
                    let _ = netlink_del_veth_ingress(&mut netlink, &veth);
                    return Err(e);
                }
            }
        }
        network.guest.routes = guest_routes(&routes, &names);
        Ok(network)
    });
    result
}

/// A tap beside veth `veth` (link `index`), up with its MTU, and the redirects both ways.
fn plumb(
    netlink: &mut Netlink,
    index: u32,
    veth: &str,
    mtu: u32,
) -> Result<(File, String), NetworkError> {
    let name = tap_name(veth);
    let file = open_tap(&name)?;
    let tap_index = netlink
        .links()?
        .iter()
        .find(|l| link_name(l) == Some(name.as_str()))
        .map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Tap {
            name: name.clone(),
            what: "find the new tap",
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
    netlink.set_link(tap_index, &name, mtu, true)?;
    netlink.add_ingress(index, veth)?;
    netlink.add_ingress(tap_index, &name)?;
    netlink.add_redirect(index, tap_index, &format!("redirect {veth} to {name}"))?;
    netlink.add_redirect(tap_index, index, &format!("redirect {name} to {veth}"))?;
    Ok((file, name))
}

fn netlink_del_veth_ingress(netlink: &mut Netlink, veth: &str) -> Result<(), NetworkError> {
    let index = netlink
        .links()?
        .iter()
        .find(|l| link_name(l) == Some(veth))
        .map(|l| l.header.index);
    match index {
        Some(index) => match netlink.del_ingress(index, veth) {
            // No qdisc (never made, or already gone): nothing to undo.
            Err(NetworkError::Netlink(runv_netlink::Error { source, .. }))
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                Ok(())
            }
            other => other,
        },
        None => Ok(()),
    }
}

/// Removes runv's plumbing of `plumbed` in the current namespace: each veth's ingress qdisc
/// (and so its filter) and each tap still there (one a stray descriptor keeps alive).
fn undo(netlink: &mut Netlink, plumbed: &[Plumbed]) -> Vec<String> {
    let mut errors = Vec::new();
    for p in plumbed {
        if let Err(e) = netlink_del_veth_ingress(netlink, &p.veth) {
            errors.push(e.to_string());
        }
        let tap = netlink.links().ok().and_then(|links| {
            links
                .iter()
                .find(|l| link_name(l) == Some(p.tap.as_str()))
                .map(|l| l.header.index)
        });
        if let Some(index) = tap {
            let mut link = LinkMessage::default();
            link.header.index = index;
            if let Err(e) = netlink.request(
                &format!("delete tap {}", p.tap),
                RouteNetlinkMessage::DelLink(link),
                0,
            ) {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

/// Undoes runv's plumbing in `netns` (after the hypervisor is gone, or for a sandbox whose
/// owner died). A namespace that no longer exists has nothing left to undo.
pub fn teardown(netns: &Path, plumbed: &[Plumbed]) -> Result<(), NetworkError> {
    if plumbed.is_empty() || !netns.exists() {
        return Ok(());
    }
    let plumbed = plumbed.to_vec();
    let path = netns.to_path_buf();
    in_namespace(netns, move || {
        let mut netlink = Netlink::open()?;
        let errors = undo(&mut netlink, &plumbed);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetworkError::Namespace {
                path,
                reason: errors.join("; "),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz() {
        assert_eq!(tap_name("eth0"), "eth0_rv");
        let long = tap_name("a-very-long-veth-name");
        assert_eq!(long.len(), 15);
        assert!(long.ends_with("_rv"));
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = setup(file.path()).unwrap_err().to_string();
        assert!(err.contains("not a namespace file"), "{err}");
        let err = setup(Path::new("/nonexistent/netns"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/netns"), "{err}");
    }
}
