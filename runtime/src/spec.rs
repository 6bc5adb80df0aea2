//! OCI runtime specs for containers that runv makes itself (`runv run`), from the few options
//! a command line gives.

use oci_spec::runtime::{
    BoxBuilder, LinuxNamespace, LinuxNamespaceType, Mount, Process, Root, Spec, User,
};

/// Errors building a spec from options.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No command.
    #[error("No command given: name the program to run after `--`")]
    NoCommand,
    /// An environment entry is not `KEY=VALUE`.
    #[error("Invalid environment variable {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    /// The working directory is not absolute.
    #[error("Invalid working directory {0:?}: must be an absolute path")]
    BadCwd(String),
    /// A volume is not `HOST:CONTAINER[:ro|rw]` with absolute paths.
    #[error("Invalid volume {arg:?}: {reason}")]
    BadVolume {
        /// The option as given.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The user is not `UID[:GID]`.
    #[error("Invalid user {0:?}: expected UID[:GID] as numbers")]
    BadUser(String),
    /// The spec could not be assembled.
    #[error("Build the OCI spec: {0}")]
    Build(String),
    /// Serialization failed.
    #[error("Serialize the OCI spec")]
    Serialize(#[source] serde_json::Error),
}

/// The first lifecycle hook list of `spec` that is not empty, as an error naming it: runv
/// does not run OCI hooks, and dropping them silently would skip what the caller relies on.
pub fn refuse_hooks(spec: &Spec) -> Result<(), String> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let lists = [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
        ("poststart", hooks.poststart()),
        ("poststop", hooks.poststop()),
    ];
    for (name, list) in lists {
        if let Some(first) = list.as_ref().and_then(|l| l.first()) {
            return Err(format!(
                "hooks.{name}: OCI hooks are not supported by runv (the container runs in a VM; {} would not run)",
                first.path().display()
            ));
        }
    }
    Ok(())
}

/// The default `PATH` of a container, as runc and containerd set it.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a command line says about a container's process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing in) the default environment.
    pub env: Vec<String>,
    /// Working directory, absolute.
    pub cwd: Option<String>,
    /// `UID[:GID]`.
    pub user: Option<String>,
    /// Whether the process gets a terminal.
    pub terminal: bool,
    /// Initial terminal size, rows and columns.
    pub console_size: Option<(u16, u16)>,
    /// The container's hostname.
    pub hostname: Option<String>,
}

/// Parses `UID[:GID]`; the gid defaults to the uid's number as runc's `--user` does not, so
/// it defaults to 0 (root's group) like docker.
pub fn parse_user(user: &str) -> Result<(u32, u32), SpecError> {
    let bad = || SpecError::BadUser(user.to_string());
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid
        .map(str::parse)
        .transpose()
        .map_err(|_| bad())?
        .unwrap_or(0);
    Ok((uid, gid))
}

/// Merges `KEY=VALUE` overrides into `base`: a later key replaces an earlier one in place.
pub fn merge_env(base: &[String], overrides: &[String]) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = base.to_vec();
    for entry in overrides {
        let Some((key, _)) = entry.split_once('=') else {
            return Err(SpecError::BadEnv(entry.clone()));
        };
        if key.is_empty() {
            return Err(SpecError::BadEnv(entry.clone()));
        }
        let prefix = format!("{key}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(slot) => slot.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    Ok(env)
}

/// Parses a `-v` option, `HOST:CONTAINER[:ro|rw]` with absolute paths, into a recursive
/// bind mount as docker and podman make it; sharing it with the VM is
/// [`crate::volumes`]' business.
pub fn parse_volume(arg: &str) -> Result<Mount, SpecError> {
    let bad = |reason| SpecError::BadVolume {
        arg: arg.to_string(),
        reason,
    };
    let parts: Vec<&str> = arg.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [host, container] => (*host, *container, "rw"),
        [host, container, mode] => (*host, *container, *mode),
        _ => return Err(bad("expected HOST:CONTAINER or HOST:CONTAINER:ro")),
    };
    if !host.starts_with('/') {
        return Err(bad("the host path must be absolute"));
    }
    if !container.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    if std::path::Path::new(container).parent().is_none() {
        return Err(bad("the container path cannot be /"));
    }
    if mode != "ro" && mode != "rw" {
        return Err(bad("the mode must be ro or rw"));
    }
    let mut mount = Mount::default();
    mount.set_destination(container.into());
    mount.set_typ(Some("bind".to_string()));
    mount.set_source(Some(host.into()));
    mount.set_options(Some(vec!["rbind".to_string(), mode.to_string()]));
    Ok(mount)
}

/// Adds `-v` volumes to a spec's mounts, in order.
pub fn add_volumes(spec: &mut Spec, volumes: &[String]) -> Result<(), SpecError> {
    if volumes.is_empty() {
        return Ok(());
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for arg in volumes {
        mounts.push(parse_volume(arg)?);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// A spec for one container: runc's defaults with the process from `opts`, a writable root
/// at `rootfs`, and its own mount, pid, ipc, uts and cgroup namespaces (the network is the
/// sandbox's).
pub fn build(opts: &ProcessOptions) -> Result<Spec, SpecError> {
    if opts.args.is_empty() || opts.args[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut base = vec![DEFAULT_PATH.to_string()];
    if opts.terminal {
        base.push("TERM=xterm".to_string());
    }
    let env = merge_env(&base, &opts.env)?;
    let cwd = opts.cwd.clone().unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(SpecError::BadCwd(cwd));
    }
    let (uid, gid) = match &opts.user {
        Some(user) => parse_user(user)?,
        None => (0, 0),
    };

    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);

    let mut process = Process::default();
    process.set_args(Some(opts.args.clone()));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_user(user);
    process.set_terminal(Some(opts.terminal));
    if let Some((rows, cols)) = opts.console_size {
        let size = BoxBuilder::default()
            .height(u32::from(rows))
            .width(u32::from(cols))
            .build()
            .map_err(|e| SpecError::Build(e.to_string()))?;
        process.set_console_size(Some(size));
    }

    let mut root = Root::default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(false));

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(Some(
        opts.hostname.clone().unwrap_or_else(|| "runv".to_string()),
    ));
    if let Some(linux) = spec.linux_mut() {
        let namespaces = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
        ]
        .into_iter()
        .map(|typ| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            ns
        })
        .collect();
        linux.set_namespaces(Some(namespaces));
    }
    Ok(spec)
}

/// The spec as the JSON the agent takes.
pub fn to_json(spec: &Spec) -> Result<String, SpecError> {
    serde_json::to_string(spec).map_err(SpecError::Serialize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> ProcessOptions {
        ProcessOptions {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn hooks_are_refused_by_name() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion": "1.0.2", "hooks": {"prestart": [], "poststart": [{"path": "/bin/hook"}]}}"#,
        )
        .unwrap();
        let err = refuse_hooks(&spec).unwrap_err();
        assert!(err.starts_with("hooks.poststart:"), "{err}");
        assert!(err.contains("/bin/hook"), "{err}");
        let spec: Spec =
            serde_json::from_str(r#"{"ociVersion": "1.0.2", "hooks": {"prestart": []}}"#).unwrap();
        assert!(refuse_hooks(&spec).is_ok());
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        for bad in ["", "x", "1:y", "1:2:3", "-1"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_overrides_replace_in_place() {
        let env = merge_env(
            &[DEFAULT_PATH.into(), "A=1".into()],
            &["A=2".into(), "B=x=y".into()],
        )
        .unwrap();
        assert_eq!(
            env,
            vec![DEFAULT_PATH.to_string(), "A=2".into(), "B=x=y".into()]
        );
        assert!(matches!(
            merge_env(&[], &["NOEQ".into()]),
            Err(SpecError::BadEnv(_))
        ));
        assert!(matches!(
            merge_env(&[], &["=v".into()]),
            Err(SpecError::BadEnv(_))
        ));
    }

    #[test]
    fn spec_carries_the_options() {
        let mut o = opts(&["sh", "-c", "true"]);
        o.env = vec!["FOO=bar".into()];
        o.cwd = Some("/tmp".into());
        o.user = Some("1000:1000".into());
        o.terminal = true;
        o.console_size = Some((40, 120));
        let spec = build(&o).unwrap();
        let json: serde_json::Value = serde_json::from_str(&to_json(&spec).unwrap()).unwrap();
        let p = &json["process"];
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "true"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["user"]["gid"], 1000);
        assert_eq!(p["terminal"], true);
        assert_eq!(p["consoleSize"]["height"], 40);
        assert_eq!(p["consoleSize"]["width"], 120);
        assert!(p["env"].as_array().unwrap().contains(&"FOO=bar".into()));
        assert!(p["env"].as_array().unwrap().contains(&"TERM=xterm".into()));
        assert_eq!(json["root"]["readonly"], false);
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts", "cgroup"]);
    }

    #[test]
    fn volumes_parse_like_docker() {
        let m = parse_volume("/srv/data:/data").unwrap();
        assert_eq!(m.destination(), std::path::Path::new("/data"));
        assert_eq!(
            m.source().as_deref(),
            Some(std::path::Path::new("/srv/data"))
        );
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(
            m.options().as_deref(),
            Some(&["rbind".to_string(), "rw".to_string()][..])
        );
        let m = parse_volume("/etc/hosts:/etc/hosts:ro").unwrap();
        assert_eq!(
            m.options().as_deref(),
            Some(&["rbind".to_string(), "ro".to_string()][..])
        );
        for (bad, why) in [
            ("data:/data", "host path must be absolute"),
            ("/data:data", "container path must be absolute"),
            ("/data:/", "cannot be /"),
            ("/data:/d:rx", "mode must be ro or rw"),
            ("/data", "expected HOST:CONTAINER"),
            ("/a:/b:ro:x", "expected HOST:CONTAINER"),
        ] {
            let err = parse_volume(bad).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
        let mut spec = build(&opts(&["true"])).unwrap();
        add_volumes(&mut spec, &["/a:/a".into(), "/b:/b:ro".into()]).unwrap();
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        // After the spec's default mounts, in order.
        assert_eq!(dests[dests.len() - 2..], ["/a", "/b"]);
    }

    #[test]
    fn bad_options_are_named() {
        assert!(matches!(build(&opts(&[])), Err(SpecError::NoCommand)));
        let mut o = opts(&["true"]);
        o.cwd = Some("relative".into());
        assert!(build(&o).unwrap_err().to_string().contains("relative"));
    }
}
