//! `linux.resources.devices`: the OCI device rules, evaluated as runc evaluates them, and
//! the cgroup v2 device program (BPF_PROG_TYPE_CGROUP_DEVICE) that enforces them.
//!
//! The spec's rules are followed by the devices every container may use (the same list
//! runc appends), then folded in order the way the cgroup v1 device controller folds
//! writes to `devices.allow` / `devices.deny`: a rule of type `a` resets everything to
//! allow-all or deny-all; other rules add or remove exceptions to that default. The
//! program checks the exceptions and returns the default when none matches.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::bpf::{Insn, Reg};
use super::cgroup::FieldError;

/// Access bits as the kernel passes them to device programs (`BPF_DEVCG_ACC_*`).
const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// The largest major and minor numbers a Linux dev_t holds (12 and 20 bits).
pub const MAX_MAJOR: i64 = (1 << 12) - 1;
pub const MAX_MINOR: i64 = (1 << 20) - 1;

/// The node type a rule is about (`BPF_DEVCG_DEV_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    Block = 1,
    Char = 2,
}

/// One exception: a node type with a major and minor number, `None` for any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub typ: NodeType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
}

/// One validated rule; `key` is `None` for type `a` (every device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub key: Option<Key>,
    pub access: u8,
}

/// The rules runc appends after the spec's, so that every container can use these
/// devices (and create any node: `m` on every char and block device).
pub fn default_rules() -> Vec<Rule> {
    let char_dev = |major: Option<u32>, minor: Option<u32>, access: u8| Rule {
        allow: true,
        key: Some(Key {
            typ: NodeType::Char,
            major,
            minor,
        }),
        access,
    };
    vec![
        char_dev(None, None, ACC_MKNOD),
        Rule {
            allow: true,
            key: Some(Key {
                typ: NodeType::Block,
                major: None,
                minor: None,
            }),
            access: ACC_MKNOD,
        },
        char_dev(Some(1), Some(3), ACC_ALL), // /dev/null
        char_dev(Some(1), Some(8), ACC_ALL), // /dev/random
        char_dev(Some(1), Some(7), ACC_ALL), // /dev/full
        char_dev(Some(5), Some(0), ACC_ALL), // /dev/tty
        char_dev(Some(1), Some(5), ACC_ALL), // /dev/zero
        char_dev(Some(1), Some(9), ACC_ALL), // /dev/urandom
        char_dev(Some(5), Some(1), ACC_ALL), // /dev/console
        char_dev(Some(136), None, ACC_ALL),  // /dev/pts/*
        char_dev(Some(5), Some(2), ACC_ALL), // /dev/ptmx
    ]
}

/// Validates the spec's rules; errors name the rule (`linux.resources.devices[2].access`).
pub fn parse_rules(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, FieldError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| parse_rule(i, rule))
        .collect()
}

fn parse_rule(index: usize, rule: &LinuxDeviceCgroup) -> Result<Rule, FieldError> {
    let field = |name: &str| format!("linux.resources.devices[{index}].{name}");
    let number = |name: &str, value: Option<i64>, max: i64| match value {
        None | Some(-1) => Ok(None),
        Some(n) if (0..=max).contains(&n) => Ok(u32::try_from(n).ok()),
        Some(n) => Err(FieldError {
            field: field(name),
            reason: format!("{n} is out of range (0..={max}, or -1 for any)"),
        }),
    };
    let major = number("major", rule.major(), MAX_MAJOR)?;
    let minor = number("minor", rule.minor(), MAX_MINOR)?;
    let access =
        parse_access(rule.access().as_deref().unwrap_or("")).map_err(|reason| FieldError {
            field: field("access"),
            reason,
        })?;
    let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => {
            if major.is_some() || minor.is_some() {
                return Err(FieldError {
                    field: field("type"),
                    reason: "type \"a\" covers every device; major and minor must be absent or -1"
                        .into(),
                });
            }
            None
        }
        LinuxDeviceType::C => Some(NodeType::Char),
        LinuxDeviceType::B => Some(NodeType::Block),
        other => {
            return Err(FieldError {
                field: field("type"),
                reason: format!("{:?} is not a, c or b", other.as_str()),
            })
        }
    };
    Ok(Rule {
        allow: rule.allow(),
        key: typ.map(|typ| Key { typ, major, minor }),
        access,
    })
}

/// `rwm` letters as access bits; empty means all three, as in the OCI spec's examples.
fn parse_access(access: &str) -> Result<u8, String> {
    if access.is_empty() {
        return Ok(ACC_ALL);
    }
    access.chars().try_fold(0, |bits, c| match c {
        'r' => Ok(bits | ACC_READ),
        'w' => Ok(bits | ACC_WRITE),
        'm' => Ok(bits | ACC_MKNOD),
        other => Err(format!(
            "{access:?} has {other:?}; only r, w and m are allowed"
        )),
    })
}

/// The folded state: a default and the exceptions to it, in the order they were made.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub default_allow: bool,
    pub exceptions: Vec<(Key, u8)>,
}

impl Policy {
    /// Folds the spec's rules followed by the default ones.
    pub fn from_spec(rules: &[LinuxDeviceCgroup]) -> Result<Self, FieldError> {
        let mut policy = Self::default();
        for (i, rule) in parse_rules(rules)?.iter().enumerate() {
            policy.apply(rule).map_err(|reason| FieldError {
                field: format!("linux.resources.devices[{i}]"),
                reason,
            })?;
        }
        for rule in default_rules() {
            policy.apply(&rule).map_err(|reason| FieldError {
                field: "linux.resources.devices".into(),
                reason: format!("conflicts with a device every container may use: {reason}"),
            })?;
        }
        Ok(policy)
    }

    fn apply(&mut self, rule: &Rule) -> Result<(), String> {
        let Some(key) = rule.key else {
            *self = Self {
                default_allow: rule.allow,
                exceptions: Vec::new(),
            };
            return Ok(());
        };
        if rule.allow == self.default_allow {
            self.remove(key, rule.access)
        } else {
            self.add(key, rule.access);
            Ok(())
        }
    }

    fn add(&mut self, key: Key, access: u8) {
        match self.exceptions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, bits)) => *bits |= access,
            None => self.exceptions.push((key, access)),
        }
    }

    /// Takes `access` out of the exception for exactly `key`. An exception that covers
    /// `key` with a wildcard cannot lose part of its range, so that is an error rather
    /// than a rule silently without effect.
    fn remove(&mut self, key: Key, access: u8) -> Result<(), String> {
        let wider = [
            Key { major: None, ..key },
            Key { minor: None, ..key },
            Key {
                major: None,
                minor: None,
                ..key
            },
        ];
        for wide in wider.iter().filter(|w| **w != key) {
            if let Some((_, bits)) = self.exceptions.iter().find(|(k, _)| k == wide) {
                if bits & access != 0 {
                    return Err(format!(
                        "cannot take {} out of the wider rule {}",
                        describe(&key, access),
                        describe(wide, *bits)
                    ));
                }
            }
        }
        if let Some(pos) = self.exceptions.iter().position(|(k, _)| *k == key) {
            self.exceptions[pos].1 &= !access;
            if self.exceptions[pos].1 == 0 {
                self.exceptions.remove(pos);
            }
        }
        Ok(())
    }

    /// Whether the policy lets a process do `access` on a device, as the program decides
    /// (the tests' model of the program).
    #[cfg(test)]
    pub fn allows(&self, typ: NodeType, major: u32, minor: u32, access: u8) -> bool {
        for (key, bits) in self.exceptions.iter().rev() {
            let matches = key.typ == typ
                && key.major.is_none_or(|m| m == major)
                && key.minor.is_none_or(|m| m == minor);
            if !matches {
                continue;
            }
            if self.default_allow && access & bits != 0 {
                return false;
            }
            if !self.default_allow && access & !bits == 0 {
                return true;
            }
        }
        self.default_allow
    }

    /// The device program. Registers: r2 = node type, r3 = requested access, r4 = major,
    /// r5 = minor (from `struct bpf_cgroup_dev_ctx`). Each exception, newest first, is a
    /// block that falls through to the next one unless it matches; the last block returns
    /// the default.
    ///
    /// With a default of deny an allow exception matches only when it grants every
    /// requested access bit; with a default of allow a deny exception matches when it
    /// covers any of them (the cgroup v1 controller's semantics).
    pub fn program(&self) -> Vec<Insn> {
        let mut program = vec![
            Insn::load_word(Reg::R2, Reg::R1, 0),
            Insn::and32_imm(Reg::R2, 0xffff),
            Insn::load_word(Reg::R3, Reg::R1, 0),
            Insn::rsh32_imm(Reg::R3, 16),
            Insn::load_word(Reg::R4, Reg::R1, 4),
            Insn::load_word(Reg::R5, Reg::R1, 8),
        ];
        for (key, bits) in self.exceptions.iter().rev() {
            let mut block = vec![Insn::jne_imm(Reg::R2, key.typ as i32, 0)];
            if self.default_allow {
                block.push(Insn::mov32_reg(Reg::R1, Reg::R3));
                block.push(Insn::and32_imm(Reg::R1, i32::from(*bits)));
                block.push(Insn::jeq_imm(Reg::R1, 0, 0));
            } else if *bits != ACC_ALL {
                block.push(Insn::mov32_reg(Reg::R1, Reg::R3));
                block.push(Insn::and32_imm(Reg::R1, i32::from(*bits)));
                block.push(Insn::jne_reg(Reg::R1, Reg::R3, 0));
            }
            if let Some(major) = key.major {
                block.push(Insn::jne_imm(Reg::R4, imm(major), 0));
            }
            if let Some(minor) = key.minor {
                block.push(Insn::jne_imm(Reg::R5, imm(minor), 0));
            }
            block.push(Insn::mov64_imm(Reg::R0, i32::from(!self.default_allow)));
            block.push(Insn::exit());
            // Every jump in the block skips to the instruction after it.
            let len = block.len();
            for (i, insn) in block.iter_mut().enumerate() {
                if insn.is_jump() {
                    insn.set_offset(i16::try_from(len - i - 1).unwrap_or(i16::MAX));
                }
            }
            program.extend(block);
        }
        program.push(Insn::mov64_imm(Reg::R0, i32::from(self.default_allow)));
        program.push(Insn::exit());
        program
    }
}

/// Major and minor numbers are validated to fit 20 bits, so they are positive immediates.
fn imm(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn describe(key: &Key, access: u8) -> String {
    let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
    let typ = match key.typ {
        NodeType::Char => 'c',
        NodeType::Block => 'b',
    };
    let mut letters = String::new();
    for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
        if access & bit != 0 {
            letters.push(c);
        }
    }
    format!("{typ} {}:{} {letters}", num(key.major), num(key.minor))
}

#[cfg(test)]
mod tests {
    use super::super::bpf;
    use super::*;

    fn rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    const CRI_DEFAULT: &str = r#"[{"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"}]"#;

    #[test]
    fn deny_all_then_allows() {
        let policy = Policy::from_spec(&rules(CRI_DEFAULT)).unwrap();
        assert!(!policy.default_allow);
        // /dev/null, /dev/zero and the defaults pass; anything else is refused.
        assert!(policy.allows(NodeType::Char, 1, 3, ACC_READ | ACC_WRITE));
        assert!(policy.allows(NodeType::Char, 1, 5, ACC_READ));
        assert!(policy.allows(NodeType::Char, 1, 7, ACC_WRITE));
        assert!(policy.allows(NodeType::Char, 136, 4, ACC_READ | ACC_WRITE));
        assert!(policy.allows(NodeType::Char, 1, 11, ACC_MKNOD));
        assert!(policy.allows(NodeType::Block, 8, 0, ACC_MKNOD));
        assert!(!policy.allows(NodeType::Char, 1, 11, ACC_READ));
        assert!(!policy.allows(NodeType::Block, 8, 0, ACC_READ));
        assert!(!policy.allows(NodeType::Char, 10, 200, ACC_READ));
    }

    #[test]
    fn no_rules_means_the_defaults_only() {
        let policy = Policy::from_spec(&[]).unwrap();
        assert!(!policy.default_allow);
        assert_eq!(policy.exceptions.len(), default_rules().len());
        assert!(policy.allows(NodeType::Char, 5, 2, ACC_READ));
        assert!(!policy.allows(NodeType::Char, 4, 1, ACC_READ));
    }

    #[test]
    fn last_matching_rule_wins() {
        let policy = Policy::from_spec(&rules(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
                {"allow": false, "type": "c", "major": 10, "minor": 200, "access": "w"}]"#,
        ))
        .unwrap();
        assert!(policy.allows(NodeType::Char, 10, 200, ACC_READ | ACC_MKNOD));
        assert!(!policy.allows(NodeType::Char, 10, 200, ACC_WRITE));
        assert!(!policy.allows(NodeType::Char, 10, 200, ACC_READ | ACC_WRITE));
    }

    #[test]
    fn allow_all_resets_and_denies_are_exceptions() {
        let policy = Policy::from_spec(&rules(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 200},
                {"allow": true, "access": "rwm"},
                {"allow": false, "type": "b", "major": 8, "access": "w"}]"#,
        ))
        .unwrap();
        assert!(policy.default_allow);
        assert_eq!(
            policy.exceptions,
            vec![(
                Key {
                    typ: NodeType::Block,
                    major: Some(8),
                    minor: None
                },
                ACC_WRITE
            )]
        );
        assert!(policy.allows(NodeType::Block, 8, 1, ACC_READ));
        // A deny exception refuses any overlap with what it covers.
        assert!(!policy.allows(NodeType::Block, 8, 1, ACC_READ | ACC_WRITE));
        assert!(policy.allows(NodeType::Char, 4, 4, ACC_ALL));
    }

    #[test]
    fn holes_in_wildcards_are_refused() {
        let err = Policy::from_spec(&rules(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 4, "access": "rw"},
                {"allow": false, "type": "c", "major": 4, "minor": 1, "access": "r"}]"#,
        ))
        .unwrap_err();
        assert_eq!(err.field, "linux.resources.devices[2]");
        assert!(err.reason.contains("c 4:* rw"), "{}", err.reason);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            (
                r#"[{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rx"}]"#,
                "linux.resources.devices[0].access",
            ),
            (
                r#"[{"allow": false}, {"allow": true, "type": "c", "major": 5000}]"#,
                "linux.resources.devices[1].major",
            ),
            (
                r#"[{"allow": true, "type": "c", "major": 1, "minor": -2}]"#,
                "linux.resources.devices[0].minor",
            ),
            (
                r#"[{"allow": true, "type": "p"}]"#,
                "linux.resources.devices[0].type",
            ),
            (
                r#"[{"allow": true, "type": "a", "major": 1}]"#,
                "linux.resources.devices[0].type",
            ),
        ];
        for (json, field) in cases {
            let err = Policy::from_spec(&rules(json)).unwrap_err();
            assert_eq!(err.field, field, "{json}");
        }
    }

    #[test]
    fn program_bytes_for_a_known_policy() {
        let policy = Policy {
            default_allow: false,
            exceptions: vec![
                (
                    Key {
                        typ: NodeType::Char,
                        major: Some(1),
                        minor: Some(3),
                    },
                    ACC_ALL,
                ),
                (
                    Key {
                        typ: NodeType::Char,
                        major: Some(136),
                        minor: None,
                    },
                    ACC_READ | ACC_WRITE,
                ),
            ],
        };
        let bytes = bpf::encode(&policy.program());
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x61, 0x12, 0, 0, 0, 0, 0, 0,          // r2 = *(u32 *)(r1 + 0)
            0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0,    // w2 &= 0xffff
            0x61, 0x13, 0, 0, 0, 0, 0, 0,          // r3 = *(u32 *)(r1 + 0)
            0x74, 0x03, 0, 0, 16, 0, 0, 0,         // w3 >>= 16
            0x61, 0x14, 4, 0, 0, 0, 0, 0,          // r4 = *(u32 *)(r1 + 4)
            0x61, 0x15, 8, 0, 0, 0, 0, 0,          // r5 = *(u32 *)(r1 + 8)
            // c 136:* rw (the newest exception first)
            0x55, 0x02, 6, 0, 2, 0, 0, 0,          // if r2 != 2 goto +6
            0xbc, 0x31, 0, 0, 0, 0, 0, 0,          // w1 = w3
            0x54, 0x01, 0, 0, 6, 0, 0, 0,          // w1 &= rw
            0x5d, 0x31, 3, 0, 0, 0, 0, 0,          // if r1 != r3 goto +3
            0x55, 0x04, 2, 0, 136, 0, 0, 0,        // if r4 != 136 goto +2
            0xb7, 0x00, 0, 0, 1, 0, 0, 0,          // r0 = 1
            0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
            // c 1:3 rwm
            0x55, 0x02, 4, 0, 2, 0, 0, 0,          // if r2 != 2 goto +4
            0x55, 0x04, 3, 0, 1, 0, 0, 0,          // if r4 != 1 goto +3
            0x55, 0x05, 2, 0, 3, 0, 0, 0,          // if r5 != 3 goto +2
            0xb7, 0x00, 0, 0, 1, 0, 0, 0,          // r0 = 1
            0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
            // default: deny
            0xb7, 0x00, 0, 0, 0, 0, 0, 0,          // r0 = 0
            0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn programs_pass_the_kernel_verifier() {
        // Loading needs CAP_BPF (or CAP_SYS_ADMIN); the agent runs as root.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: programs not loaded");
            return;
        }
        let many: Vec<String> = (0..500)
            .map(|i| {
                format!(
                    r#"{{"allow": true, "type": "b", "major": 8, "minor": {i}, "access": "r"}}"#
                )
            })
            .collect();
        let many = format!(r#"[{{"allow": false}}, {}]"#, many.join(","));
        for json in [
            CRI_DEFAULT,
            "[]",
            r#"[{"allow": true, "access": "rwm"}, {"allow": false, "type": "b", "access": "w"}]"#,
            &many,
        ] {
            let program = Policy::from_spec(&rules(json)).unwrap().program();
            let loaded = bpf::DeviceProgram::load(&program);
            assert!(loaded.is_ok(), "{json}: {:?}", loaded.err());
        }
    }

    #[test]
    fn deny_exceptions_check_any_overlap() {
        let policy = Policy {
            default_allow: true,
            exceptions: vec![(
                Key {
                    typ: NodeType::Block,
                    major: None,
                    minor: None,
                },
                ACC_WRITE,
            )],
        };
        let bytes = bpf::encode(&policy.program()[6..]);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x55, 0x02, 5, 0, 1, 0, 0, 0,          // if r2 != 1 goto +5
            0xbc, 0x31, 0, 0, 0, 0, 0, 0,          // w1 = w3
            0x54, 0x01, 0, 0, 4, 0, 0, 0,          // w1 &= w
            0x15, 0x01, 2, 0, 0, 0, 0, 0,          // if r1 == 0 goto +2
            0xb7, 0x00, 0, 0, 0, 0, 0, 0,          // r0 = 0
            0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
            0xb7, 0x00, 0, 0, 1, 0, 0, 0,          // r0 = 1
            0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
        ];
        assert_eq!(bytes, want);
    }
}
