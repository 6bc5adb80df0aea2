//! Logs to stderr (the guest console, which the host records) with `tracing`.

use tracing::Level;

/// The level asked for by `runv.log=` on a kernel command line, if any; the last one wins,
/// as with other kernel parameters.
pub fn level_from_cmdline(cmdline: &str) -> Option<Level> {
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|word| word.strip_prefix("runv.log="))
        .and_then(parse_level)
}

/// Parses `debug`, `info`, `warn`, ... (case-insensitive).
pub fn parse_level(name: &str) -> Option<Level> {
    name.parse().ok()
}

/// Installs the global subscriber. `uptime` stamps lines with the time since start, which
/// is the guest's boot time when the agent is PID 1.
pub fn init(level: Level, uptime: bool) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    let result = if uptime {
        builder
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(err) = result {
        eprintln!("runv-agent: logging is not available: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_from_kernel_command_line() {
        let cmdline = "console=ttyS0 reboot=t panic=-1 runv.log=debug rdinit=/init\n";
        assert_eq!(level_from_cmdline(cmdline), Some(Level::DEBUG));
        assert_eq!(level_from_cmdline("runv.log=WARN"), Some(Level::WARN));
        assert_eq!(
            level_from_cmdline("runv.log=warn quiet runv.log=debug"),
            Some(Level::DEBUG)
        );
        assert_eq!(level_from_cmdline("console=ttyS0"), None);
        assert_eq!(level_from_cmdline("runv.log=loud"), None);
    }
}
