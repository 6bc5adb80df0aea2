//! containerd-shim-runv-v2: containerd's shim v2 for runv (runtime type
//! `io.containerd.runv.v2`). One shim per pod: it boots the pod's VM and runs the pod's
//! containers in it through the runv runtime library.

mod container;
mod errors;
mod events;
mod io;
mod logging;
mod metrics;
mod shim;
mod sizing;
mod spec;
mod task;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-v" || a == "--v" || a == "-version")
    {
        println!("{}:", env!("CARGO_PKG_NAME"));
        println!("  Runtime: {}", shim::RUNTIME_ID);
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let flags = match shim::parse_flags(&args) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("{}: {e}", shim::RUNTIME_ID);
            return ExitCode::FAILURE;
        }
    };
    let serving = flags.action.is_empty();
    if serving {
        // The serving shim keeps the pod's mounts (the container roots under the sandbox's
        // shared directory) in a mount namespace of its own, as `runv run` does: the host
        // never sees them, and they vanish with the shim and its helpers however the shim
        // ends, so a crashed shim cannot leave mounts behind for `delete` to find. The
        // helpers (virtiofsd) start from this namespace and see the roots through the shared
        // directory's propagation. unshare(CLONE_NEWNS) needs a single-threaded process:
        // it happens before the async runtime exists.
        if let Err(e) = private_mount_namespace() {
            eprintln!(
                "{}: create a private mount namespace: {e}",
                shim::RUNTIME_ID
            );
            return ExitCode::FAILURE;
        }
    }
    // One thread for everything: the sandbox's helper processes carry PR_SET_PDEATHSIG,
    // which fires when the thread that spawned them ends, so they are spawned from the main
    // thread, which lives as long as the shim and so as long as the sandbox.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: start the async runtime: {e}", shim::RUNTIME_ID);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match flags.action.as_str() {
            "start" => shim::start(&flags).await.map(|address| {
                print!("{address}");
            }),
            "delete" => shim::delete(&flags).await.map(|bytes| {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&bytes);
            }),
            "" => shim::serve(&flags).await,
            other => Err(shim::ProtocolError::Args(format!("unknown action {other}"))),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {}", shim::RUNTIME_ID, errors::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn private_mount_namespace() -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    // Slave: host mounts still show up here, the shim's never show up there.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
}
