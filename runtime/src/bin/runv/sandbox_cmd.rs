//! `runv sandbox ...`: the sandboxes on this host, found through their state directories.

use std::time::{SystemTime, UNIX_EPOCH};

use runv_runtime::config::Config;
use runv_runtime::state::{self, SandboxDir, SandboxState, SandboxStatus};
use serde::Serialize;

use crate::{error_chain, EXIT_RUNTIME_ERROR};

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// List the sandboxes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the state of a stopped sandbox (left by `runv run` without --rm).
    Rm {
        /// Sandbox id.
        id: String,
    },
}

pub fn main(cmd: SandboxCommand, config: Config) -> i32 {
    let result = match cmd {
        SandboxCommand::List { json } => list(&config, json),
        SandboxCommand::Rm { id } => remove(&config, &id),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("runv: {e}");
            EXIT_RUNTIME_ERROR
        }
    }
}

#[derive(Debug, Serialize)]
struct Listed {
    /// The state as saved.
    #[serde(flatten)]
    state: SandboxState,
    /// The status as seen now: a sandbox whose owner died shows as `dead`.
    live_status: String,
}

fn live_status(dir: &SandboxDir, state: &SandboxState) -> String {
    match state.status {
        SandboxStatus::Stopped => "stopped".to_string(),
        _ if !dir.owner_alive() => "dead".to_string(),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    }
}

fn age(created_unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let secs = now.saturating_sub(created_unix);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn list(config: &Config, json: bool) -> Result<(), String> {
    let dirs = state::list(&config.runtime.state_dir).map_err(|e| error_chain(&e))?;
    let mut listed = Vec::new();
    for dir in dirs {
        match dir.load() {
            Ok(state) => listed.push(Listed {
                live_status: live_status(&dir, &state),
                state,
            }),
            Err(e) => eprintln!(
                "runv: skipping {}: {}",
                dir.path().display(),
                error_chain(&e)
            ),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&listed).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<8} {:<5} {:>4} {:>7} {:>5}  {:<20} CONTAINERS",
        "ID", "STATUS", "HYPERV", "ACCEL", "CPUS", "MEM", "AGE", "PIDS"
    );
    for l in listed {
        let s = &l.state;
        let pids: Vec<String> = s
            .processes
            .iter()
            .map(|p| format!("{}:{}", p.name, p.pid))
            .collect();
        let containers: Vec<&str> = s.containers.iter().map(|c| c.id.as_str()).collect();
        println!(
            "{:<20} {:<8} {:<8} {:<5} {:>4} {:>6}M {:>5}  {:<20} {}",
            s.id,
            l.live_status,
            s.hypervisor,
            s.accel,
            s.vcpus,
            s.memory_mib,
            age(s.created_unix),
            if pids.is_empty() {
                "-".to_string()
            } else {
                pids.join(",")
            },
            containers.join(",")
        );
    }
    Ok(())
}

fn remove(config: &Config, id: &str) -> Result<(), String> {
    let dir = SandboxDir::new(&config.runtime.state_dir, id).map_err(|e| e.to_string())?;
    let state = dir.load().map_err(|e| error_chain(&e))?;
    if dir.owner_alive() {
        return Err(format!(
            "Sandbox {id} is {} and owned by pid {}; stop it first",
            live_status(&dir, &state),
            state.owner_pid
        ));
    }
    dir.remove().map_err(|e| error_chain(&e))
}
