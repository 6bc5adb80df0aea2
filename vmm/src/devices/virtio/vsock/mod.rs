//! virtio-vsock served in-process, speaking the hybrid-vsock protocol on a host Unix socket.
//!
//! * `packet.rs`: the packet header.
//! * `queue.rs`: pure queue processing (guest TX chains to packets, packets into RX chains).
//! * `muxer.rs`: the host side: connections to Unix sockets, the `CONNECT <port>` handshake,
//!   credit flow control.
//! * `device.rs`: the [`VirtioDevice`](super::VirtioDevice) and its event wiring.

pub mod device;
pub mod muxer;
pub mod packet;
pub mod queue;

pub use device::Vsock;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The guest's CID (fixed for runv sandboxes).
pub const DEFAULT_GUEST_CID: u64 = 3;
