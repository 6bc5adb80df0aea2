//! `runv`: run containers in microVMs by hand, and inspect the sandboxes on this host.

mod check;
mod kill;
mod run;
mod sandbox_cmd;
mod stdio;
mod tty;

use clap::{Parser, Subcommand};
use runv_runtime::config::Config;

/// Exit status for errors of runv itself (as docker and podman use it).
pub const EXIT_RUNTIME_ERROR: i32 = 125;
/// Exit status when the command cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// Exit status when the command does not exist.
pub const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug, Parser)]
#[command(name = "runv", version, about = "Run containers in their own microVM")]
struct Cli {
    /// Log runv's own steps to stderr (`RUNV_LOG=debug` does the same, with filters).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a container in a new sandbox VM.
    Run(Box<run::RunArgs>),
    /// Send a signal to a container (as `runc kill`).
    Kill(kill::KillArgs),
    /// Report what this host offers and which backend runv would use.
    Check(check::CheckArgs),
    /// Inspect and manage sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
}

fn init_logging(debug: bool) {
    let filter = match std::env::var("RUNV_LOG") {
        Ok(filter) => tracing_subscriber::EnvFilter::new(filter),
        Err(_) => tracing_subscriber::EnvFilter::new(if debug { "debug" } else { "warn" }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn load_config() -> Result<Config, i32> {
    match Config::load() {
        Ok((config, _)) => Ok(config),
        Err(e) => {
            eprintln!("runv: {}", error_chain(&e));
            Err(EXIT_RUNTIME_ERROR)
        }
    }
}

/// An error and its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.debug);
    let code = match cli.command {
        Command::Run(args) => match load_config() {
            Ok(config) => run::main(*args, config),
            Err(code) => code,
        },
        Command::Check(args) => check::main(args),
        Command::Kill(args) => match load_config() {
            Ok(config) => kill::main(args, config),
            Err(code) => code,
        },
        Command::Sandbox(cmd) => match load_config() {
            Ok(config) => sandbox_cmd::main(cmd, config),
            Err(code) => code,
        },
    };
    // Exit without waiting on the thread that may still block reading stdin.
    std::process::exit(code);
}
