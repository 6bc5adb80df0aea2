//! Small wrappers over what the checks read from the kernel.

use std::ffi::CString;

/// The value of field `name` (`CapEff`, `Seccomp`, ...) of /proc/self/status.
pub fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A C string of `s`; a string with a NUL in it becomes the empty string (no path has one).
pub fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// The name of an errno value, for messages.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        0 => "success",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::EEXIST => "EEXIST",
        libc::ENXIO => "ENXIO",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EBUSY => "EBUSY",
        libc::EIO => "EIO",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// uname(2).
pub fn uname() -> Option<libc::utsname> {
    // SAFETY: utsname is plain old data; zeroed is a valid value for uname(2) to fill.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) writes only into the struct we pass.
    let rc = unsafe { libc::uname(&mut uts) };
    (rc == 0).then_some(uts)
}

/// A NUL-terminated `c_char` field as text.
pub fn field_str(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
