//! The host side of the agent protocol: hybrid-vsock transport and a typed client.

mod client;
mod hvsock;

pub use client::{AgentClient, AgentError, ProcessExit};
pub use hvsock::{connect_hybrid_vsock, HvsockError};
