//! The control socket: JSON requests, one per line, answered with one JSON line each.
//!
//! ```text
//! {"action":"pause"}                      -> {"ok":true}
//! {"action":"resume"}                     -> {"ok":true}
//! {"action":"shutdown","timeout_ms":5000} -> {"ok":true}   (Ctrl-Alt-Del, then forced)
//! {"action":"metrics"}                    -> {"ok":true,"metrics":{...}}
//! {"action":"status"}                     -> {"ok":true,"state":"running","boot_marks":[...]}
//! anything else                           -> {"ok":false,"error":"..."}
//! ```

pub mod request;
pub mod server;

pub use request::{parse_request, ApiRequest};
pub use server::ApiServer;
