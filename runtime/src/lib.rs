//! runv-runtime: the host side of runv.
//!
//! A [`sandbox::Sandbox`] is one VM with runv-agent inside; the runtime starts it with a
//! [`hypervisor::Hypervisor`] backend, talks to the agent over hybrid vsock
//! ([`agent::AgentClient`]), shares container roots and volumes with the guest over virtio-fs
//! ([`rootfs`], [`volumes`]) and keeps its state under `/run/runv/<id>/` ([`state`]). The `runv` command
//! and the containerd shim are thin layers over this crate.

#![warn(missing_docs)]

pub mod agent;
pub mod block_rootfs;
pub mod bundle;
pub mod config;
pub mod host;
pub mod host_cgroup;
pub mod hypervisor;
pub mod network;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod volumes;
