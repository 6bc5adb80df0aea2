//! A container's user namespace: checking `linux.uidMappings` / `linux.gidMappings` and
//! writing them to the new namespace of the init process.
//!
//! The ids are the guest's: container ids map to ids of the VM, not of the host (the VM
//! is already the boundary between the container and the host).

use std::fmt::Write as _;
use std::path::Path;

use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, Spec};
use serde::{Deserialize, Serialize};

use super::spec::SpecError;

/// The most lines the kernel takes in a uid_map or gid_map (UID_GID_MAP_MAX_EXTENTS).
pub const MAX_MAP_LINES: usize = 340;

/// One line of a uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The id mappings of a new user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMaps {
    /// Whether the container uid `uid` is mapped.
    pub fn maps_uid(&self, uid: u32) -> bool {
        covers(&self.uids, uid)
    }

    /// Whether the container gid `gid` is mapped.
    pub fn maps_gid(&self, gid: u32) -> bool {
        covers(&self.gids, gid)
    }
}

fn covers(ranges: &[IdRange], id: u32) -> bool {
    ranges.iter().any(|r| {
        id >= r.container_id && u64::from(id) < u64::from(r.container_id) + u64::from(r.size)
    })
}

fn invalid_at(field: String, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn mappings(spec: &Spec) -> (Option<&Vec<LinuxIdMapping>>, Option<&Vec<LinuxIdMapping>>) {
    let linux = spec.linux().as_ref();
    (
        linux.and_then(|l| l.uid_mappings().as_ref()),
        linux.and_then(|l| l.gid_mappings().as_ref()),
    )
}

/// What the spec's mappings mean for a container: `new_user` when it creates a user
/// namespace (mappings required, checked, returned), else `joined_user` (the path) when it
/// joins one: that namespace has its mappings, so the spec may only repeat them (as
/// containerd does for the containers of a pod); else mappings are refused.
pub fn plan(
    spec: &Spec,
    new_user: bool,
    joined_user: Option<&Path>,
) -> Result<Option<IdMaps>, SpecError> {
    let (uids, gids) = mappings(spec);
    if !new_user {
        for (field, file, list) in [
            ("linux.uidMappings", "uid_map", uids),
            ("linux.gidMappings", "gid_map", gids),
        ] {
            let Some(list) = list.filter(|l| !l.is_empty()) else {
                continue;
            };
            let Some(path) = joined_user else {
                return Err(invalid_at(
                    field.to_string(),
                    "id mappings need a user namespace in linux.namespaces",
                ));
            };
            let current = current_map(path, file).ok_or_else(|| {
                invalid_at(
                    field.to_string(),
                    format!(
                        "the joined user namespace {} has its mappings already; give none",
                        path.display()
                    ),
                )
            })?;
            let given = checked(field, Some(list))?;
            if given != current {
                return Err(invalid_at(
                    field.to_string(),
                    format!(
                        "differ from those of the joined user namespace {} ({})",
                        path.display(),
                        map_text(&current).trim_end().replace('\n', ", ")
                    ),
                ));
            }
        }
        return Ok(None);
    }
    let maps = IdMaps {
        uids: checked("linux.uidMappings", uids)?,
        gids: checked("linux.gidMappings", gids)?,
    };
    // The container's init sets the container up as root of its user namespace.
    for (field, mapped) in [
        ("linux.uidMappings", maps.maps_uid(0)),
        ("linux.gidMappings", maps.maps_gid(0)),
    ] {
        if !mapped {
            return Err(invalid_at(
                field.to_string(),
                "container id 0 must be mapped: the container is set up by root of its \
                 user namespace",
            ));
        }
    }
    if let Some(process) = spec.process() {
        let user = process.user();
        if !maps.maps_uid(user.uid()) {
            return Err(invalid_at(
                "process.user.uid".into(),
                format!("{} is not mapped by linux.uidMappings", user.uid()),
            ));
        }
        if !maps.maps_gid(user.gid()) {
            return Err(invalid_at(
                "process.user.gid".into(),
                format!("{} is not mapped by linux.gidMappings", user.gid()),
            ));
        }
        for (i, gid) in user.additional_gids().iter().flatten().enumerate() {
            if !maps.maps_gid(*gid) {
                return Err(invalid_at(
                    format!("process.user.additionalGids[{i}]"),
                    format!("{gid} is not mapped by linux.gidMappings"),
                ));
            }
        }
    }
    Ok(Some(maps))
}

/// Checks one list the way the kernel will, so a bad one fails before anything is made.
fn checked(field: &str, list: Option<&Vec<LinuxIdMapping>>) -> Result<Vec<IdRange>, SpecError> {
    let list = list.map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return Err(invalid_at(
            field.to_string(),
            "a new user namespace needs at least one mapping",
        ));
    }
    if list.len() > MAX_MAP_LINES {
        return Err(invalid_at(
            field.to_string(),
            format!(
                "{} mappings, the kernel takes at most {MAX_MAP_LINES}",
                list.len()
            ),
        ));
    }
    let mut ranges: Vec<IdRange> = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = || format!("{field}[{i}]");
        let range = IdRange {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        };
        if range.size == 0 {
            return Err(invalid_at(at(), "size is 0"));
        }
        // The kernel refuses ranges whose end does not fit in 32 bits, and id 2^32-1
        // (the invalid id).
        for (what, start) in [
            ("containerID", range.container_id),
            ("hostID", range.host_id),
        ] {
            if u64::from(start) + u64::from(range.size) > u64::from(u32::MAX) {
                return Err(invalid_at(
                    at(),
                    format!(
                        "{what} {start} + size {} goes beyond the last id {}",
                        range.size,
                        u32::MAX - 1
                    ),
                ));
            }
        }
        for (j, other) in ranges.iter().enumerate() {
            if overlap(
                range.container_id,
                other.container_id,
                range.size,
                other.size,
            ) {
                return Err(invalid_at(
                    at(),
                    format!("container ids overlap those of {field}[{j}]"),
                ));
            }
            if overlap(range.host_id, other.host_id, range.size, other.size) {
                return Err(invalid_at(
                    at(),
                    format!("host ids overlap those of {field}[{j}]"),
                ));
            }
        }
        ranges.push(range);
    }
    Ok(ranges)
}

fn overlap(a: u32, b: u32, a_size: u32, b_size: u32) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a < b + u64::from(b_size) && b < a + u64::from(a_size)
}

/// The mappings of the user namespace at `path` when it is a `/proc/<pid>/ns/user` link:
/// the `/proc/<pid>/<file>` next to it.
fn current_map(path: &Path, file: &str) -> Option<Vec<IdRange>> {
    let dir = path.parent()?;
    if path.file_name()? != "user" || dir.file_name()? != "ns" {
        return None;
    }
    let text = std::fs::read_to_string(dir.parent()?.join(file)).ok()?;
    parse_map(&text)
}

/// Parses the text of a uid_map or gid_map.
fn parse_map(text: &str) -> Option<Vec<IdRange>> {
    text.lines()
        .map(|line| {
            let mut numbers = line.split_whitespace().map(str::parse::<u32>);
            let range = IdRange {
                container_id: numbers.next()?.ok()?,
                host_id: numbers.next()?.ok()?,
                size: numbers.next()?.ok()?,
            };
            numbers.next().is_none().then_some(range)
        })
        .collect()
}

/// The text of a uid_map or gid_map.
pub fn map_text(ranges: &[IdRange]) -> String {
    let mut text = String::new();
    for r in ranges {
        let _ = writeln!(text, "{} {} {}", r.container_id, r.host_id, r.size);
    }
    text
}

/// Writes the mappings of the user namespace `pid` was cloned into. The whole map goes in
/// one write, as the kernel takes a map only once.
pub fn write_maps(pid: Pid, maps: &IdMaps) -> Result<(), (String, nix::errno::Errno)> {
    for (file, ranges) in [("uid_map", &maps.uids), ("gid_map", &maps.gids)] {
        let path = format!("/proc/{}/{file}", pid.as_raw());
        std::fs::write(&path, map_text(ranges)).map_err(|e| {
            (
                format!("write {path}"),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(linux: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2",
                "process": {{"args": ["sh"], "cwd": "/", "user": {{"uid": 0, "gid": 0}}}},
                "linux": {linux}}}"#
        ))
        .unwrap()
    }

    fn map(c: u32, h: u32, s: u32) -> String {
        format!(r#"{{"containerID": {c}, "hostID": {h}, "size": {s}}}"#)
    }

    fn with_maps(uids: &[String], gids: &[String]) -> Spec {
        spec(&format!(
            r#"{{"uidMappings": [{}], "gidMappings": [{}]}}"#,
            uids.join(","),
            gids.join(",")
        ))
    }

    fn err(spec: &Spec, new_user: bool, joined_user: Option<&Path>) -> String {
        plan(spec, new_user, joined_user).unwrap_err().to_string()
    }

    #[test]
    fn good_mappings_are_kept_in_order() {
        let s = with_maps(
            &[map(0, 100000, 1), map(1, 200001, 65535)],
            &[map(0, 100000, 65536)],
        );
        let maps = plan(&s, true, None).unwrap().unwrap();
        assert_eq!(maps.uids.len(), 2);
        assert_eq!(
            map_text(&maps.uids),
            "0 100000 1\n1 200001 65535\n",
            "one line per range"
        );
        assert!(maps.maps_uid(65535));
        assert!(!maps.maps_uid(65536));
        assert!(maps.maps_gid(0));
    }

    #[test]
    fn a_new_user_namespace_needs_both_mappings() {
        let s = spec(r#"{"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}"#);
        let e = err(&s, true, None);
        assert!(e.starts_with("linux.gidMappings: "), "{e}");
        let e = err(&spec("{}"), true, None);
        assert!(e.starts_with("linux.uidMappings: "), "{e}");
    }

    #[test]
    fn bad_ranges_name_their_index() {
        let good = map(0, 100000, 65536);
        let e = err(
            &with_maps(
                &[good.clone(), map(70000, 0, 0)],
                std::slice::from_ref(&good),
            ),
            true,
            None,
        );
        assert_eq!(e, "linux.uidMappings[1]: size is 0");
        let e = err(
            &with_maps(
                std::slice::from_ref(&good),
                &[good.clone(), map(65535, 300000, 10)],
            ),
            true,
            None,
        );
        assert_eq!(
            e,
            "linux.gidMappings[1]: container ids overlap those of linux.gidMappings[0]"
        );
        let e = err(
            &with_maps(
                &[good.clone(), map(65536, 165535, 10)],
                std::slice::from_ref(&good),
            ),
            true,
            None,
        );
        assert_eq!(
            e,
            "linux.uidMappings[1]: host ids overlap those of linux.uidMappings[0]"
        );
        let e = err(
            &with_maps(&[map(0, u32::MAX - 10, 11)], std::slice::from_ref(&good)),
            true,
            None,
        );
        assert!(e.starts_with("linux.uidMappings[0]: hostID"), "{e}");
        // Adjacent ranges do not overlap.
        assert!(plan(
            &with_maps(
                &[good.clone(), map(65536, 165536, 10)],
                std::slice::from_ref(&good)
            ),
            true,
            None
        )
        .is_ok());
    }

    #[test]
    fn root_must_be_mapped() {
        let e = err(
            &with_maps(&[map(1, 100000, 10)], &[map(0, 1, 1)]),
            true,
            None,
        );
        assert!(
            e.starts_with("linux.uidMappings: container id 0 must be mapped"),
            "{e}"
        );
        let e = err(
            &with_maps(&[map(0, 1, 1)], &[map(1000, 100000, 10)]),
            true,
            None,
        );
        assert!(
            e.starts_with("linux.gidMappings: container id 0 must be mapped"),
            "{e}"
        );
    }

    #[test]
    fn too_many_lines_are_refused() {
        let many: Vec<String> = (0..341).map(|i| map(i, 100000 + i, 1)).collect();
        let e = err(&with_maps(&many, &[map(0, 1, 1)]), true, None);
        assert!(e.starts_with("linux.uidMappings: 341 mappings"), "{e}");
        assert!(plan(&with_maps(&many[..340], &[map(0, 1, 1)]), true, None).is_ok());
    }

    #[test]
    fn mappings_without_a_new_user_namespace_are_refused() {
        let s = with_maps(&[map(0, 1000, 1)], &[map(0, 1000, 1)]);
        let e = err(&s, false, None);
        assert!(
            e.starts_with("linux.uidMappings: id mappings need a user namespace"),
            "{e}"
        );
        let bound = Path::new("/run/netns/pod-user");
        let e = err(&s, false, Some(bound));
        assert!(
            e.starts_with("linux.uidMappings: the joined user namespace"),
            "{e}"
        );
        let gids_only = spec(r#"{"gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}"#);
        assert!(err(&gids_only, false, None).starts_with("linux.gidMappings: "));
        assert_eq!(plan(&spec("{}"), false, Some(bound)).unwrap(), None);
        assert_eq!(
            plan(&spec(r#"{"uidMappings": []}"#), false, None).unwrap(),
            None
        );
    }

    #[test]
    fn a_joined_user_namespace_may_be_given_its_own_mappings() {
        // This process's user namespace; mappings equal to a joined namespace's are
        // accepted (a host test covers that with a container's namespace).
        let own = Path::new("/proc/self/ns/user");
        let current = current_map(own, "uid_map").unwrap();
        let text = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        assert_eq!(current, parse_map(&text).unwrap());
        let other = with_maps(&[map(0, 100000, 65536)], &[]);
        let e = err(&other, false, Some(own));
        assert!(
            e.starts_with("linux.uidMappings: differ from those of the joined user namespace /proc/self/ns/user ("),
            "{e}"
        );
        assert_eq!(
            parse_map("         0     100000      65536\n1 2 3\n"),
            Some(vec![
                IdRange {
                    container_id: 0,
                    host_id: 100000,
                    size: 65536
                },
                IdRange {
                    container_id: 1,
                    host_id: 2,
                    size: 3
                }
            ])
        );
        assert_eq!(parse_map("0 1\n"), None);
    }

    #[test]
    fn the_process_user_must_be_mapped() {
        let mut s = with_maps(&[map(0, 100000, 1000)], &[map(0, 100000, 1000)]);
        let mut process = s.process().clone().unwrap();
        let mut user = process.user().clone();
        user.set_uid(1000);
        process.set_user(user.clone());
        s.set_process(Some(process.clone()));
        assert_eq!(
            err(&s, true, None),
            "process.user.uid: 1000 is not mapped by linux.uidMappings"
        );
        user.set_uid(999);
        user.set_gid(5);
        user.set_additional_gids(Some(vec![6, 1000]));
        process.set_user(user);
        s.set_process(Some(process));
        assert_eq!(
            err(&s, true, None),
            "process.user.additionalGids[1]: 1000 is not mapped by linux.gidMappings"
        );
    }
}
