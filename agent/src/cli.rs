//! The agent's command line.
//!
//! `runv-agent` with no arguments is the guest's `/init`. The flags select the dev mode used
//! to exercise the container code on a host:
//! `runv-agent --listen unix:///path/agent.sock [--cgroup-root DIR] [--no-init] [--log LEVEL]`.

use std::path::PathBuf;

/// The argv[1] that makes the binary run as a container's init process.
pub const CONTAINER_INIT_ARG: &str = "__container-init";

/// The argv[1] that makes the binary run as an exec process of a container.
pub const CONTAINER_EXEC_ARG: &str = "__container-exec";

/// Parsed command line of the agent mode.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// Address to serve on instead of vsock (dev mode).
    pub listen: Option<String>,
    /// The cgroup v2 hierarchy to create container cgroups under.
    pub cgroup_root: Option<PathBuf>,
    /// Skip the PID 1 system setup even when running as PID 1.
    pub no_init: bool,
    /// Log level override (`debug`, `info`, `warn`, ...).
    pub log: Option<String>,
}

/// A command line the agent does not understand.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

impl Args {
    /// Parses the arguments after argv[0].
    pub fn parse(args: &[String]) -> Result<Self, ArgsError> {
        let mut parsed = Self::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| iter.next().cloned())
                    .ok_or_else(|| ArgsError::MissingValue(name.to_string()))
            };
            match name {
                "--listen" => parsed.listen = Some(value()?),
                "--cgroup-root" => parsed.cgroup_root = Some(PathBuf::from(value()?)),
                "--log" => parsed.log = Some(value()?),
                "--no-init" => parsed.no_init = true,
                _ => return Err(ArgsError::Unknown(arg.clone())),
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Args::parse(&args)
    }

    #[test]
    fn no_arguments_is_pid1_mode() {
        assert_eq!(parse(&[]).unwrap(), Args::default());
    }

    #[test]
    fn dev_mode_flags() {
        let args = parse(&[
            "--listen",
            "unix:///tmp/a.sock",
            "--cgroup-root=/sys/fs/cgroup/unified",
            "--no-init",
        ])
        .unwrap();
        assert_eq!(args.listen.as_deref(), Some("unix:///tmp/a.sock"));
        assert_eq!(
            args.cgroup_root,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(args.no_init);
    }

    #[test]
    fn bad_arguments() {
        assert_eq!(
            parse(&["--listen"]),
            Err(ArgsError::MissingValue("--listen".into()))
        );
        assert_eq!(parse(&["-x"]), Err(ArgsError::Unknown("-x".into())));
    }
}
