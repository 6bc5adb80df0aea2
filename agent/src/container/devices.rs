//! The device nodes and links every container's /dev has, and the spec's `linux.devices`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::device_rules::{MAX_MAJOR, MAX_MINOR};
use super::mounts::secure_join;
use super::spec::SpecError;
use super::sync::InitFailure;

/// The mode of a spec device without a `fileMode`.
const DEFAULT_DEVICE_MODE: u32 = 0o666;

/// Character devices copied from the guest's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Links in /dev: (name, target).
const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Fills `<rootfs>/dev` with the standard devices and links it lacks.
pub fn populate(rootfs: &Path) -> Result<(), InitFailure> {
    let dev = rootfs.join("dev");
    for name in DEVICES {
        let dest = dev.join(name);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        let source = Path::new("/dev").join(name);
        let meta = match fs::metadata(&source) {
            Ok(meta) if meta.file_type().is_char_device() => meta,
            _ => {
                tracing::debug!(device = name, "not in the guest's /dev");
                continue;
            }
        };
        create_device(&source, &dest, meta.rdev())
            .map_err(|e| InitFailure::os(format!("create /dev/{name}"), e))?;
    }
    for (name, target) in LINKS {
        let dest = dev.join(name);
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, &dest).map_err(|e| {
            InitFailure::os(
                format!("link /dev/{name}"),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    Ok(())
}

/// A node with the guest device's number, or a bind mount of it where mknod is refused.
fn create_device(source: &Path, dest: &Path, rdev: u64) -> Result<(), Errno> {
    let mode = Mode::from_bits_truncate(0o666);
    match mknod(dest, SFlag::S_IFCHR, mode, rdev) {
        Ok(()) => {
            // mknod applies the umask; devices are world-usable.
            nix::sys::stat::fchmodat(
                None,
                dest,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
        }
        Err(Errno::EPERM) => {
            fs::File::create(dest)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            mount(
                Some(source),
                dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        }
        Err(err) => Err(err),
    }
}

/// Checks `linux.devices` before anything is made: an absolute path below /dev without
/// `..`, a node type (c, b, u or p), numbers a dev_t can hold, permission bits only.
pub fn validate(devices: &[LinuxDevice]) -> Result<(), SpecError> {
    for (i, device) in devices.iter().enumerate() {
        let field = |name: &str| format!("linux.devices[{i}].{name}");
        let invalid = |name: &str, reason: String| SpecError::InvalidField {
            field: field(name),
            reason,
        };
        let path = device.path();
        let mut components = path.components();
        let under_dev = path.is_absolute()
            && components.next() == Some(Component::RootDir)
            && components.next() == Some(Component::Normal("dev".as_ref()))
            && components.clone().next().is_some()
            && components.all(|c| matches!(c, Component::Normal(_)));
        if !under_dev {
            return Err(invalid(
                "path",
                format!("{path:?} must be an absolute path below /dev without \"..\""),
            ));
        }
        if device.typ() == LinuxDeviceType::A {
            return Err(invalid(
                "type",
                "\"a\" is not a node type (c, b, u or p)".into(),
            ));
        }
        if device.typ() != LinuxDeviceType::P {
            if !(0..=MAX_MAJOR).contains(&device.major()) {
                return Err(invalid(
                    "major",
                    format!("{} is out of range (0..={MAX_MAJOR})", device.major()),
                ));
            }
            if !(0..=MAX_MINOR).contains(&device.minor()) {
                return Err(invalid(
                    "minor",
                    format!("{} is out of range (0..={MAX_MINOR})", device.minor()),
                ));
            }
        }
        if let Some(mode) = device.file_mode() {
            if mode & !0o7777 != 0 {
                return Err(invalid(
                    "fileMode",
                    format!("{mode:#o} has bits beyond the permission bits (0o7777)"),
                ));
            }
        }
    }
    Ok(())
}

/// Creates the spec's device nodes in `<rootfs>/dev` (before the standard ones, so a spec
/// node wins over a default of the same name). A node that already exists is kept. Where
/// mknod is refused, the guest's node of the same path is bind-mounted instead, if it is
/// the same device.
pub fn create_spec_devices(rootfs: &Path, devices: &[LinuxDevice]) -> Result<(), InitFailure> {
    for device in devices {
        let path = device.path();
        let dest = secure_join(rootfs, path);
        if fs::symlink_metadata(&dest).is_ok() {
            tracing::debug!(device = %path.display(), "already present");
            continue;
        }
        let what = |verb: &str| format!("{verb} device {}", path.display());
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| InitFailure::os(what("create directory for"), errno(&e)))?;
        }
        let kind = match device.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let rdev = match kind {
            SFlag::S_IFIFO => 0,
            _ => makedev(number(device.major()), number(device.minor())),
        };
        let mode = Mode::from_bits_truncate(device.file_mode().unwrap_or(DEFAULT_DEVICE_MODE));
        match mknod(&dest, kind, mode, rdev) {
            Ok(()) => {
                // mknod applies the umask; the spec's mode is meant as given.
                nix::sys::stat::fchmodat(
                    None,
                    &dest,
                    mode,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| InitFailure::os(what("chmod"), e))?;
                chown(
                    &dest,
                    Some(Uid::from_raw(device.uid().unwrap_or(0))),
                    Some(Gid::from_raw(device.gid().unwrap_or(0))),
                )
                .map_err(|e| InitFailure::os(what("chown"), e))?;
            }
            Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
                bind_guest_node(path, &dest, kind, rdev)
                    .map_err(|e| InitFailure::os(what("bind-mount (mknod refused)"), e))?;
            }
            Err(err) => return Err(InitFailure::os(what("mknod"), err)),
        }
    }
    Ok(())
}

/// Validated to fit 12 or 20 bits.
fn number(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Bind-mounts the guest's node at `path` onto `dest` when it is the device asked for.
fn bind_guest_node(path: &Path, dest: &Path, kind: SFlag, rdev: u64) -> Result<(), Errno> {
    let meta = fs::metadata(path).map_err(|e| errno(&e))?;
    let same_kind = match kind {
        SFlag::S_IFBLK => meta.file_type().is_block_device(),
        _ => meta.file_type().is_char_device(),
    };
    if !same_kind || meta.rdev() != rdev {
        return Err(Errno::ENODEV);
    }
    fs::File::create(dest).map_err(|e| errno(&e))?;
    mount(
        Some(path),
        dest,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(json: &str) -> Vec<LinuxDevice> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn good_devices_pass() {
        let list = devices(
            r#"[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438},
                {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "uid": 0, "gid": 0},
                {"path": "/dev/vda", "type": "b", "major": 254, "minor": 0},
                {"path": "/dev/fifo", "type": "p"}]"#,
        );
        validate(&list).unwrap();
    }

    #[test]
    fn bad_devices_name_the_field() {
        let cases = [
            (
                r#"{"path": "dev/x", "type": "c", "major": 1, "minor": 3}"#,
                "linux.devices[1].path",
            ),
            (
                r#"{"path": "/tmp/x", "type": "c", "major": 1, "minor": 3}"#,
                "linux.devices[1].path",
            ),
            (
                r#"{"path": "/dev", "type": "c", "major": 1, "minor": 3}"#,
                "linux.devices[1].path",
            ),
            (
                r#"{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}"#,
                "linux.devices[1].path",
            ),
            (
                r#"{"path": "/dev/x", "type": "a", "major": 1, "minor": 3}"#,
                "linux.devices[1].type",
            ),
            (
                r#"{"path": "/dev/x", "type": "c", "major": 4096, "minor": 3}"#,
                "linux.devices[1].major",
            ),
            (
                r#"{"path": "/dev/x", "type": "b", "major": 8, "minor": -1}"#,
                "linux.devices[1].minor",
            ),
            (
                r#"{"path": "/dev/x", "type": "c", "major": 1, "minor": 3, "fileMode": 8630}"#,
                "linux.devices[1].fileMode",
            ),
        ];
        for (json, field) in cases {
            let list = devices(&format!(
                r#"[{{"path": "/dev/ok", "type": "c", "major": 1, "minor": 3}}, {json}]"#
            ));
            match validate(&list) {
                Err(SpecError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
