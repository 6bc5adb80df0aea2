//! The protocol between the runv runtime on the host and runv-agent in the guest.
//!
//! Messages and ttrpc stubs are generated at build time from `protos/agent.proto`.

#![allow(missing_docs)]

/// Protobuf messages of the agent protocol.
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_mut,
    unused_results,
    unused_imports
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// Async ttrpc client and server stubs of the agent protocol.
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_mut,
    unused_results,
    unused_imports
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The vsock port runv-agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host port the agent connects to (guest CID 2) once it serves: its readiness
/// notification. The agent writes [`AGENT_READY_LINE`] and closes. The host connects to the
/// agent only after this, since a connection request that reaches the guest before its vsock
/// driver is up can be lost.
pub const AGENT_READY_PORT: u32 = 1025;

/// What the agent writes on the readiness connection.
pub const AGENT_READY_LINE: &[u8] = b"READY\n";

/// The largest chunk of stdio moved in one request.
pub const MAX_STDIO_CHUNK: u32 = 128 * 1024;
