//! A blocking route netlink socket for the few requests runv makes: send one message, read the
//! replies up to the kernel's acknowledgement or the end of a dump. Used by the runtime for
//! the pod network on the host and by runv-agent for the guest's side, so neither runs `ip`
//! or `tc`.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use netlink_packet_core;
pub use netlink_packet_route;

/// A failed request: what was asked, and the kernel's (or the socket's) answer.
#[derive(Debug)]
pub struct Error {
    /// The request, e.g. `add an ingress qdisc to eth0`.
    pub what: String,
    /// Why it failed; `raw_os_error()` holds the kernel's errno.
    pub source: std::io::Error,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    /// Opens and connects the socket.
    pub fn open() -> Result<Self, Error> {
        let wrap = |source| Error {
            what: "open a route netlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(wrap)?;
        socket.bind_auto().map_err(wrap)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(wrap)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` with `flags` (plus REQUEST and ACK); returns what the kernel sent back
    /// before its acknowledgement or the end of a dump.
    pub fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let err = |source| Error {
            what: what.to_string(),
            source,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(err)?;
        let mut replies = Vec::new();
        let mut receive = vec![0u8; 64 * 1024];
        loop {
            let size = self.socket.recv(&mut &mut receive[..], 0).map_err(err)?;
            let mut offset = 0;
            while offset < size {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&receive[offset..size]).map_err(|e| {
                        err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e.to_string(),
                        ))
                    })?;
                let length = usize::try_from(reply.header.length).unwrap_or(0);
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(code) => Err(err(std::io::Error::from_raw_os_error(
                                    code.get().saturating_neg(),
                                ))),
                            };
                        }
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, Error> {
        Ok(self
            .request(
                "list links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .collect())
    }
}

/// A link's name.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// A link's hardware address.
pub fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

/// A MAC as runv writes it: lower-case, colon-separated.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_link_is_listed() {
        // Every namespace has `lo`; listing it exercises a whole dump.
        let mut netlink = Netlink::open().unwrap();
        let links = netlink.links().unwrap();
        assert!(links.iter().any(|l| link_name(l) == Some("lo")));
    }

    #[test]
    fn macs_are_lower_case_with_colons() {
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0xff, 0, 1, 2]),
            "0a:58:ff:00:01:02"
        );
    }
}
