//! Memory of a running monitor from /proc: the whole process (smaps_rollup) and the part that
//! is guest RAM (the memfd mapping of exactly the guest's size in smaps). Guest pages count
//! only once touched, by the guest or by the monitor loading it.

use anyhow::{Context, Result};

/// kB figures of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub guest_rss_kb: u64,
    pub guest_pss_kb: u64,
}

impl Usage {
    pub fn overhead_rss_kb(&self) -> u64 {
        self.rss_kb.saturating_sub(self.guest_rss_kb)
    }

    pub fn overhead_pss_kb(&self) -> u64 {
        self.pss_kb.saturating_sub(self.guest_pss_kb)
    }
}

/// Reads the usage of `pid`, whose guest RAM is one memfd mapping of `guest_mib` MiB.
pub fn usage(pid: u32, guest_mib: u32) -> Result<Usage> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("read /proc/{pid}/smaps"))?;
    let (guest_rss_kb, guest_pss_kb) = guest_mapping(&smaps, u64::from(guest_mib) * 1024)
        .context("no guest RAM mapping (a memfd of the guest's size) in smaps")?;
    Ok(Usage {
        rss_kb: field(&rollup, "Rss:").context("no Rss in smaps_rollup")?,
        pss_kb: field(&rollup, "Pss:").context("no Pss in smaps_rollup")?,
        guest_rss_kb,
        guest_pss_kb,
    })
}

/// Rss and Pss summed over the memfd mappings of `size_kb`.
fn guest_mapping(smaps: &str, size_kb: u64) -> Option<(u64, u64)> {
    let mut found = false;
    let (mut rss, mut pss) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        if is_mapping_header(line) {
            in_guest = line.contains("/memfd:");
            continue;
        }
        if !in_guest {
            continue;
        }
        if line.starts_with("Size:") {
            in_guest = field(line, "Size:") == Some(size_kb);
            found |= in_guest;
        } else if line.starts_with("Rss:") {
            rss += field(line, "Rss:").unwrap_or(0);
        } else if line.starts_with("Pss:") {
            pss += field(line, "Pss:").unwrap_or(0);
        }
    }
    found.then_some((rss, pss))
}

/// `55d0c0a00000-55d0c0a21000 rw-p ...`: a range first, where field lines start with a name.
fn is_mapping_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|w| w.contains('-') && w.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
}

/// The kB value of the first `name` line.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0008000000 rw-s 00000000 00:01 12 /memfd:guest-ram (deleted)
Size:             131072 kB
Rss:                 520 kB
Pss:                 520 kB
7f0008000000-7f0008001000 rw-s 00000000 00:01 13 /memfd:other (deleted)
Size:                  4 kB
Rss:                   4 kB
Pss:                   4 kB
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 [heap]
Size:                132 kB
Rss:                  60 kB
Pss:                  60 kB
";

    #[test]
    fn guest_ram_is_the_memfd_of_the_guest_size() {
        assert_eq!(guest_mapping(SMAPS, 131072), Some((520, 520)));
        assert_eq!(guest_mapping(SMAPS, 65536), None);
        assert_eq!(field(SMAPS, "Rss:"), Some(520));
    }
}
