//! The host side of the agent protocol: hybrid-vsock transport, the readiness notification
//! and a typed client.

mod client;
mod hvsock;
mod ready;

pub use client::{AgentClient, AgentError, ProcessExit};
pub use hvsock::{connect_hybrid_vsock, HvsockError};
pub use ready::ReadyListener;
