//! runv-vmm: runv's microVM monitor.
//!
//! One process runs one sandbox VM on KVM. The layout follows the usual rust-vmm shape:
//! `vstate` wraps KVM objects, `arch` holds the boot setup of each architecture, `devices`
//! holds the device models (their queue processing is pure code over guest memory),
//! `device_manager` places devices on the buses, and `builder` assembles a VM from a
//! [`config::VmmConfig`].

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod device_loop;
pub mod device_manager;
pub mod devices;
pub mod jailer;
pub mod logger;
pub mod metrics;
pub mod seccomp;
pub mod vmm;
pub mod vstate;

/// Exit status of the runv-vmm process: guest asked to shut down or reboot.
pub const EXIT_GUEST_SHUTDOWN: i32 = 0;
/// Exit status: the monitor itself failed (bad configuration, setup or I/O error).
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: the guest crashed (kernel panic, triple fault, KVM internal or entry error).
pub const EXIT_GUEST_CRASH: i32 = 2;
/// Exit status: a shutdown request timed out and the VM was stopped by force.
pub const EXIT_FORCED_SHUTDOWN: i32 = 3;
