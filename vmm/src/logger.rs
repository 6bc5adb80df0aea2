//! One-line log messages on stderr, tagged with the sandbox id when one was given
//! (`runv-vmm[<id>]: ...`), so the runtime can tell monitors apart in a shared log.

use std::sync::OnceLock;

static TAG: OnceLock<String> = OnceLock::new();

/// Sets the tag from the sandbox id (first call wins).
pub fn set_sandbox_id(id: Option<&str>) {
    let tag = match id {
        Some(id) if !id.is_empty() => format!("runv-vmm[{id}]"),
        _ => "runv-vmm".to_string(),
    };
    let _ = TAG.set(tag);
}

/// The current tag.
pub fn tag() -> &'static str {
    TAG.get().map_or("runv-vmm", String::as_str)
}

/// Writes `<tag>: <message>` to stderr.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        eprintln!("{}: {}", $crate::logger::tag(), format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_tag() {
        assert!(super::tag().starts_with("runv-vmm"));
    }
}
