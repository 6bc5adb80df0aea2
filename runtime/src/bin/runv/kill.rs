//! `runv kill ID [SIGNAL]`: send a signal to a container of a running sandbox, as `runc kill`
//! does, through a connection of its own to the sandbox's agent.

use std::str::FromStr;

use nix::sys::signal::Signal;
use runv_runtime::agent::AgentClient;
use runv_runtime::config::Config;
use runv_runtime::state::{SandboxDir, SandboxStatus};

use crate::{error_chain, EXIT_RUNTIME_ERROR};

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal every process of the container, not only its init.
    #[arg(short, long)]
    all: bool,
    /// The container (or sandbox) id.
    id: String,
    /// Signal name (TERM, SIGKILL) or number.
    #[arg(default_value = "TERM")]
    signal: String,
}

/// Parses `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| format!("Unknown signal {text}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| format!("Unknown signal {text:?}"))
}

pub fn main(args: KillArgs, config: Config) -> i32 {
    let signal = match parse_signal(&args.signal) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("runv: {e}");
            return EXIT_RUNTIME_ERROR;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runv: start the async runtime: {e}");
            return EXIT_RUNTIME_ERROR;
        }
    };
    match runtime.block_on(kill(&config, &args.id, signal, args.all)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("runv: {e}");
            EXIT_RUNTIME_ERROR
        }
    }
}

async fn kill(config: &Config, id: &str, signal: i32, all: bool) -> Result<(), String> {
    let dir = SandboxDir::new(&config.runtime.state_dir, id).map_err(|e| e.to_string())?;
    let state = dir.load().map_err(|e| error_chain(&e))?;
    if state.status != SandboxStatus::Running || !dir.owner_alive() {
        return Err(format!("Sandbox {id} is not running"));
    }
    let container = state
        .containers
        .iter()
        .find(|c| c.id == id)
        .or_else(|| state.containers.first())
        .ok_or_else(|| format!("Sandbox {id} has no container"))?;
    if container.guest_pid.is_none() {
        return Err(format!("Container {} is not started", container.id));
    }
    let agent = AgentClient::connect(
        &dir.path().join("vsock.sock"),
        config.runtime.request_timeout(),
    )
    .await
    .map_err(|e| error_chain(&e))?;
    agent
        .signal_process(&container.id, "", signal, all)
        .await
        .map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
