//! `runv check`: what this host offers, which backend `auto` picks, and whether runv can run.

use std::path::{Path, PathBuf};

use runv_runtime::config::{resolve_binary, Config, ConfigSource, HypervisorKind};
use runv_runtime::host::{self, KvmKind};
use serde::Serialize;

use crate::{error_chain, EXIT_RUNTIME_ERROR};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Item {
    name: String,
    ok: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    config: String,
    kvm: KvmKind,
    hypervisor: Option<String>,
    accel: Option<String>,
    reason: String,
    items: Vec<Item>,
    can_run: bool,
    problems: Vec<String>,
}

fn binary_item(name: &str, configured: &Path, version_arg: &str) -> (Item, Option<PathBuf>) {
    match resolve_binary(configured) {
        Some(path) => {
            let version = std::process::Command::new(&path)
                .arg(version_arg)
                .output()
                .ok()
                .map(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.lines().next().unwrap_or_default().trim().to_string()
                })
                .unwrap_or_default();
            let detail = format!("{} {}", path.display(), version).trim().to_string();
            (
                Item {
                    name: name.to_string(),
                    ok: true,
                    detail,
                },
                Some(path),
            )
        }
        None => (
            Item {
                name: name.to_string(),
                ok: false,
                detail: format!("{} not found", configured.display()),
            },
            None,
        ),
    }
}

fn file_item(name: &str, path: &Path) -> Item {
    let ok = path.is_file();
    let detail = if ok {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or_default();
        format!("{} ({} KiB)", path.display(), size / 1024)
    } else {
        format!("{} missing", path.display())
    };
    Item {
        name: name.to_string(),
        ok,
        detail,
    }
}

pub fn main(args: CheckArgs) -> i32 {
    let (config, source) = match Config::load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("runv: {}", error_chain(&e));
            return EXIT_RUNTIME_ERROR;
        }
    };
    let report = build(&config, source);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_text(&report);
    }
    if report.can_run {
        0
    } else {
        1
    }
}

fn build(config: &Config, source: ConfigSource) -> Report {
    let kvm = host::detect_kvm();
    let mut problems = Vec::new();
    let choice = host::choose_for(config, None);
    let (hypervisor, accel, reason) = match &choice {
        Ok(c) => (
            Some(c.hypervisor.to_string()),
            Some(c.accel.to_string()),
            c.reason.clone(),
        ),
        Err(e) => {
            problems.push(e.to_string());
            (None, None, e.to_string())
        }
    };
    let mut items = Vec::new();
    let needs_qemu = matches!(&choice, Ok(c) if c.hypervisor == HypervisorKind::Qemu);
    let needs_vmm = matches!(&choice, Ok(c) if c.hypervisor == HypervisorKind::Builtin);
    let b = &config.binaries;
    for (name, configured, version_arg, needed) in [
        ("qemu", &b.qemu, "--version", needs_qemu),
        ("virtiofsd", &b.virtiofsd, "--version", true),
        (
            "vhost-device-vsock",
            &b.vhost_device_vsock,
            "--version",
            needs_qemu,
        ),
        ("runv-vmm", &b.runv_vmm, "--version", needs_vmm),
    ] {
        let (item, _) = binary_item(name, configured, version_arg);
        if needed && !item.ok {
            problems.push(format!("{name} is needed but {}", item.detail));
        }
        items.push(item);
    }
    for (name, path) in [
        ("guest kernel", &config.guest.kernel),
        ("guest initramfs", &config.guest.initrd),
    ] {
        let item = file_item(name, path);
        if !item.ok {
            problems.push(format!("{name} {}", item.detail));
        }
        items.push(item);
    }
    let rootfs = &config.runtime.default_rootfs;
    items.push(Item {
        name: "default rootfs".to_string(),
        ok: runv_runtime::rootfs::validate(rootfs).is_ok(),
        detail: rootfs.display().to_string(),
    });
    let is_root = nix::unistd::Uid::effective().is_root();
    items.push(Item {
        name: "root".to_string(),
        ok: is_root,
        detail: if is_root {
            "running as root".into()
        } else {
            "runv run needs root".into()
        },
    });
    if !is_root {
        problems.push("not running as root".to_string());
    }
    Report {
        config: match source {
            ConfigSource::Defaults => "built-in defaults (no config file)".to_string(),
            ConfigSource::File(p) => p.display().to_string(),
        },
        kvm,
        hypervisor,
        accel,
        reason,
        can_run: problems.is_empty(),
        items,
        problems,
    }
}

fn print_text(r: &Report) {
    println!("config:      {}", r.config);
    println!("kvm:         {}", r.kvm);
    match (&r.hypervisor, &r.accel) {
        (Some(h), Some(a)) => println!("auto picks:  {h} with {a} ({})", r.reason),
        _ => println!("auto picks:  nothing ({})", r.reason),
    }
    for item in &r.items {
        println!(
            "{:<5} {:<19} {}",
            if item.ok { "ok" } else { "--" },
            item.name,
            item.detail
        );
    }
    if r.can_run {
        println!("runv can run sandboxes on this host");
    } else {
        for p in &r.problems {
            println!("problem: {p}");
        }
        println!("runv cannot run sandboxes on this host");
    }
}
