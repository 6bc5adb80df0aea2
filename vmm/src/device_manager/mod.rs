//! Device placement.
pub mod bus;
