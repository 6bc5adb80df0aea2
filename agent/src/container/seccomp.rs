//! `linux.seccomp`: the OCI seccomp profile compiled to a classic BPF program and
//! installed in the container's processes (init and exec).
//!
//! # Why our own generator
//!
//! rust-vmm's `seccompiler` builds one filter per match action and kills the process on a
//! foreign audit arch. Stacking one filter per OCI action does not give OCI's semantics:
//! the kernel returns the most restrictive action of all filters, so a syscall that one
//! rule allows is still refused by the filter that carries a restrictive default action,
//! and it has no way to treat x32 syscall numbers (same audit arch as x86_64) apart. A
//! profile fits one program with a default action, per-rule actions and 64-bit argument
//! compares; that program is small enough to generate here, and the unit tests below run
//! it in a BPF interpreter. Syscall numbers come from the `syscalls` crate (the native
//! table of the target architecture).
//!
//! # The program
//!
//! 1. A call from a foreign audit arch (i386 or x32 on x86_64, arm on aarch64) gets the
//!    default action when that denies the call (ERRNO, TRAP, KILL_*), otherwise
//!    `ERRNO(ENOSYS)`, as a kernel without that ABI would answer. runv does not
//!    translate rules to other ABIs: `architectures` is accepted, the native arch is
//!    always filtered, and no foreign call gets past the filter.
//! 2. With a denying default action, a syscall newer than every syscall the profile
//!    names, and `clone3` when the profile does not name it, get `ERRNO(ENOSYS)`: libc
//!    then falls back to the older call (glibc only falls back from `clone3` to `clone`
//!    on ENOSYS, not on EPERM), as other runtimes do.
//! 3. Each syscall the profile names gets its rules, most restrictive action first (the
//!    kernel's order: KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG, ALLOW); the
//!    first rule whose conditions all hold decides. So when several rules of a syscall
//!    match one call, the most restrictive wins; between two ERRNO rules, the one listed
//!    first.
//! 4. Everything else gets the default action, and so does syscall number -1 (a call a
//!    tracer skipped: an allowing default keeps the tracer's return value).
//!
//! Rules whose action is the default action are dropped (as runc does), so a syscall
//! listed only with the default action gets the default action whatever its arguments.
//! Names that are not syscalls of this architecture are skipped with a warning: profiles
//! list the syscalls of every arch and kernel.
//!
//! # Where it is installed
//!
//! With `noNewPrivileges`, as late as possible: right before `execve`, so the agent's own
//! setup needs nothing from the profile but `execve`. Without it the kernel wants
//! CAP_SYS_ADMIN to load a filter, so it is loaded before the user and capabilities
//! change, and the rest of the setup (setuid, capset, the start handshake) runs under it.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use nix::errno::Errno;
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use super::sync::{FailureKind, InitFailure};

/// `BPF_MAXINSNS`: the kernel refuses longer programs.
const MAX_INSNS: usize = 4096;
/// Largest errno the kernel hands back (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

// Classic BPF opcodes (linux/filter.h): class | size/op | mode/source.
/// `BPF_LD | BPF_W | BPF_ABS` (the first two are 0).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGT_K: u16 = 0x05 | 0x20;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
/// x32 syscalls run with the x86_64 audit arch and this bit in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: Option<u32> = Some(0x4000_0000);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;
#[cfg(target_arch = "aarch64")]
const X32_SYSCALL_BIT: Option<u32> = None;

#[cfg(not(target_endian = "little"))]
compile_error!("the seccomp argument offsets assume a little-endian target");

/// A profile the agent refuses, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SeccompError {
    pub field: String,
    pub reason: String,
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> SeccompError {
    SeccompError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a filter answers for a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// The filter's return value.
    fn ret(self) -> u32 {
        match self {
            Self::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
            Self::KillThread => libc::SECCOMP_RET_KILL_THREAD,
            Self::Trap => libc::SECCOMP_RET_TRAP,
            Self::Errno(errno) => libc::SECCOMP_RET_ERRNO | u32::from(errno),
            Self::Trace(data) => libc::SECCOMP_RET_TRACE | u32::from(data),
            Self::Log => libc::SECCOMP_RET_LOG,
            Self::Allow => libc::SECCOMP_RET_ALLOW,
        }
    }

    /// The kernel's precedence: higher is more restrictive.
    fn rank(self) -> u8 {
        match self {
            Self::KillProcess => 6,
            Self::KillThread => 5,
            Self::Trap => 4,
            Self::Errno(_) => 3,
            Self::Trace(_) => 2,
            Self::Log => 1,
            Self::Allow => 0,
        }
    }

    /// Whether the syscall does not run (a tracer may still run it after TRACE).
    fn denies(self) -> bool {
        self.rank() >= Self::Errno(0).rank()
    }
}

/// The errno of a kernel without the syscall (`ENOSYS`).
const ENOSYS: Action = Action::Errno(38);
/// The errno when the profile gives none (`EPERM`).
const EPERM: u32 = 1;

/// An OCI action with its errno (`field` names the action, `errno_field` the errno).
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<Action, SeccompError> {
    let data = |max: u32| -> Result<u16, SeccompError> {
        let value = errno_ret.unwrap_or(EPERM);
        if value > max {
            return Err(error(errno_field, format!("{value} is above {max}")));
        }
        u16::try_from(value).map_err(|_| error(errno_field, format!("{value} is above {max}")))
    };
    let action = match act {
        LinuxSeccompAction::ScmpActErrno => return Ok(Action::Errno(data(MAX_ERRNO)?)),
        LinuxSeccompAction::ScmpActTrace => return Ok(Action::Trace(data(0xffff)?)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(error(
                field,
                "SCMP_ACT_NOTIFY is not supported (runv has no seccomp notify listener)",
            ))
        }
    };
    if errno_ret.is_some() {
        return Err(error(
            errno_field,
            format!("only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, not {act}"),
        ));
    }
    Ok(action)
}

/// A comparison of one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    index: u32,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

fn cond(arg: &LinuxSeccompArg, field: &str) -> Result<Cond, SeccompError> {
    let index = u32::try_from(arg.index())
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| {
            error(
                format!("{field}.index"),
                format!("{} is not an argument index (0-5)", arg.index()),
            )
        })?;
    Ok(Cond {
        index,
        op: arg.op(),
        value: arg.value(),
        value_two: arg.value_two().unwrap_or(0),
    })
}

/// One rule of a syscall: its action when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    action: Action,
    conds: Vec<Cond>,
}

/// A compiled profile, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    program: Vec<Insn>,
    /// `SECCOMP_FILTER_FLAG_*`.
    flags: libc::c_ulong,
}

/// A compiled profile and the names it skipped (not syscalls of this architecture).
#[derive(Debug)]
pub struct Compiled {
    pub filter: Filter,
    pub skipped: Vec<String>,
}

/// The syscall number of `name` on this architecture.
fn syscall_number(name: &str) -> Option<u32> {
    syscalls::Sysno::from_str(name)
        .ok()
        .and_then(|s| u32::try_from(s.id()).ok())
}

/// Compiles `linux.seccomp`; the error names the field at fault.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Compiled, SeccompError> {
    if seccomp.listener_path().is_some() {
        return Err(error(
            "linux.seccomp.listenerPath",
            "seccomp notify listeners are not supported",
        ));
    }
    let default = action(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let mut flags = 0;
    for flag in seccomp.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The processes are single-threaded when the filter is loaded.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            // Only changes how a notify listener waits, and there is none.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }

    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    let mut named = BTreeSet::new();
    let mut skipped = Vec::new();
    for (i, syscall) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(
            syscall.action(),
            syscall.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let conds = syscall
            .args()
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, arg)| cond(arg, &format!("{field}.args[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if syscall.names().is_empty() {
            return Err(error(format!("{field}.names"), "is empty"));
        }
        for (j, name) in syscall.names().iter().enumerate() {
            if name.is_empty() {
                return Err(error(format!("{field}.names[{j}]"), "is empty"));
            }
            let Some(nr) = syscall_number(name) else {
                if !skipped.contains(name) {
                    skipped.push(name.clone());
                }
                continue;
            };
            named.insert(nr);
            if act != default {
                rules.entry(nr).or_default().push(Rule {
                    action: act,
                    conds: conds.clone(),
                });
            }
        }
    }
    for list in rules.values_mut() {
        // Stable: rules of equal rank keep the profile's order.
        list.sort_by_key(|rule| std::cmp::Reverse(rule.action.rank()));
    }

    let program = generate(default, &rules, &named);
    if program.len() > MAX_INSNS {
        return Err(error(
            "linux.seccomp",
            format!(
                "the filter needs {} BPF instructions, the kernel takes at most {MAX_INSNS}",
                program.len()
            ),
        ));
    }
    Ok(Compiled {
        filter: Filter { program, flags },
        skipped,
    })
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The high and low 32-bit words of `v`.
fn split(v: u64) -> (u32, u32) {
    let b = v.to_be_bytes();
    (
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// Where a conditional jump inside one argument test goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    True,
    False,
}

/// The test of one condition: its instructions, jumping to `True` or `False`; the caller
/// places `False` right after them (an `ja` to the next rule) and `True` after that.
fn cond_test(c: &Cond) -> Vec<(u16, u32, To, To)> {
    use LinuxSeccompOperator as Op;
    use To::{False, Next, True};
    let lo_off = OFF_ARGS + 8 * c.index;
    let hi_off = lo_off + 4;
    let (vh, vl) = split(c.value);
    let ld = |off| (BPF_LD_W_ABS, off, Next, Next);
    match c.op {
        Op::ScmpCmpEq => vec![
            ld(hi_off),
            (BPF_JMP_JEQ_K, vh, Next, False),
            ld(lo_off),
            (BPF_JMP_JEQ_K, vl, True, False),
        ],
        Op::ScmpCmpNe => vec![
            ld(hi_off),
            (BPF_JMP_JEQ_K, vh, Next, True),
            ld(lo_off),
            (BPF_JMP_JEQ_K, vl, False, True),
        ],
        Op::ScmpCmpMaskedEq => {
            let (mh, ml) = (vh, vl);
            let (dh, dl) = split(c.value_two);
            vec![
                ld(hi_off),
                (BPF_ALU_AND_K, mh, Next, Next),
                (BPF_JMP_JEQ_K, dh, Next, False),
                ld(lo_off),
                (BPF_ALU_AND_K, ml, Next, Next),
                (BPF_JMP_JEQ_K, dl, True, False),
            ]
        }
        // arg > v: high word greater, or equal and low word greater.
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            let low = if matches!(c.op, Op::ScmpCmpGt) {
                BPF_JMP_JGT_K
            } else {
                BPF_JMP_JGE_K
            };
            vec![
                ld(hi_off),
                (BPF_JMP_JGT_K, vh, True, Next),
                (BPF_JMP_JEQ_K, vh, Next, False),
                ld(lo_off),
                (low, vl, True, False),
            ]
        }
        // arg < v is not (arg >= v); arg <= v is not (arg > v).
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            let low = if matches!(c.op, Op::ScmpCmpLt) {
                BPF_JMP_JGE_K
            } else {
                BPF_JMP_JGT_K
            };
            vec![
                ld(hi_off),
                (BPF_JMP_JGT_K, vh, False, Next),
                (BPF_JMP_JEQ_K, vh, Next, True),
                ld(lo_off),
                (low, vl, False, True),
            ]
        }
    }
}

/// A program under construction: instructions and unconditional jumps to labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    /// (index of an `ja`, label it goes to).
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    fn ret(&mut self, action: Action) {
        self.push(stmt(BPF_RET_K, action.ret()));
    }

    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    fn ja(&mut self, label: usize) {
        self.fixups.push((self.insns.len(), label));
        self.push(stmt(BPF_JMP_JA, 0));
    }

    /// Runs the next instruction when `A <op> k` holds, else skips it.
    fn when(&mut self, code: u16, k: u32) {
        self.push(jump(code, k, 0, 1));
    }

    /// One condition: falls through when it holds, jumps to `fail` when not.
    fn cond(&mut self, c: &Cond, fail: usize) {
        let body = cond_test(c);
        let false_at = body.len();
        for (i, (code, k, jt, jf)) in body.iter().copied().enumerate() {
            // Offsets count from the instruction after this one; all are < 8.
            let offset = |to: To| -> u8 {
                let target = match to {
                    To::Next => i + 1,
                    To::False => false_at,
                    To::True => false_at + 1,
                };
                u8::try_from(target - (i + 1)).unwrap_or(0)
            };
            self.push(jump(code, k, offset(jt), offset(jf)));
        }
        self.ja(fail);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label].unwrap_or(at + 1);
            self.insns[at].k = u32::try_from(target - (at + 1)).unwrap_or(u32::MAX);
        }
        self.insns
    }
}

fn generate(default: Action, rules: &BTreeMap<u32, Vec<Rule>>, named: &BTreeSet<u32>) -> Vec<Insn> {
    let foreign = if default.denies() { default } else { ENOSYS };
    let mut asm = Asm::default();
    asm.push(stmt(BPF_LD_W_ABS, OFF_ARCH));
    asm.push(jump(BPF_JMP_JEQ_K, AUDIT_ARCH_NATIVE, 1, 0));
    asm.ret(foreign);
    asm.push(stmt(BPF_LD_W_ABS, OFF_NR));
    // -1 is a call a tracer skipped: the default action keeps the tracer's return value
    // when it allows (as libseccomp does).
    asm.when(BPF_JMP_JEQ_K, u32::MAX);
    asm.ret(default);
    if let Some(bit) = X32_SYSCALL_BIT {
        asm.when(BPF_JMP_JGE_K, bit);
        asm.ret(foreign);
    }
    if default.denies() && default != ENOSYS {
        if let Some(last) = named.last() {
            asm.when(BPF_JMP_JGT_K, *last);
            asm.ret(ENOSYS);
        }
        if let Some(clone3) = syscall_number("clone3").filter(|nr| !named.contains(nr)) {
            asm.when(BPF_JMP_JEQ_K, clone3);
            asm.ret(ENOSYS);
        }
    }
    let mut blocks = Vec::new();
    for (nr, list) in rules {
        asm.when(BPF_JMP_JEQ_K, *nr);
        match list.as_slice() {
            [only] if only.conds.is_empty() => asm.ret(only.action),
            _ => {
                let label = asm.label();
                asm.ja(label);
                blocks.push((label, list));
            }
        }
    }
    asm.ret(default);
    for (label, list) in blocks {
        asm.bind(label);
        let mut decided = false;
        for rule in list {
            if rule.conds.is_empty() {
                asm.ret(rule.action);
                decided = true;
                // Later rules of this syscall cannot match first.
                break;
            }
            let next = asm.label();
            for c in &rule.conds {
                asm.cond(c, next);
            }
            asm.ret(rule.action);
            asm.bind(next);
        }
        if !decided {
            asm.ret(default);
        }
    }
    asm.finish()
}

/// The container's filter between compiling and loading.
pub struct Pending(Option<Filter>);

/// Compiles the profile of a process about to be set up. Without no_new_privileges the
/// filter is loaded now, while the process still has CAP_SYS_ADMIN; with it, loading
/// waits for [`Pending::install`] right before execve.
pub fn prepare(
    seccomp: Option<&LinuxSeccomp>,
    no_new_privileges: bool,
) -> Result<Pending, InitFailure> {
    let Some(seccomp) = seccomp else {
        return Ok(Pending(None));
    };
    let filter = compile(seccomp)
        .map_err(|e| InitFailure::new(FailureKind::InvalidArgument, e.to_string()))?
        .filter;
    if no_new_privileges {
        Ok(Pending(Some(filter)))
    } else {
        filter.install()?;
        Ok(Pending(None))
    }
}

impl Pending {
    /// Loads the filter if it is still to be loaded.
    pub fn install(self) -> Result<(), InitFailure> {
        self.0.as_ref().map(Filter::install).transpose().map(drop)
    }
}

impl Filter {
    /// Loads the filter into the calling thread (the process is single-threaded).
    pub fn install(&self) -> Result<(), InitFailure> {
        let mut insns: Vec<libc::sock_filter> = self
            .program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let len = u16::try_from(insns.len()).map_err(|_| {
            InitFailure::new(FailureKind::InvalidArgument, "seccomp filter is too long")
        })?;
        let prog = libc::sock_fprog {
            len,
            filter: insns.as_mut_ptr(),
        };
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `len` instructions from
        // `prog.filter`, which points into `insns`; both outlive the call, and the kernel
        // copies the program.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        Errno::result(ret)
            .map(drop)
            .map_err(|e| InitFailure::os("load the seccomp filter", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF seccomp program on one call (a small interpreter for what the
    /// generator emits).
    fn run(program: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for arg in args {
            data.extend_from_slice(&arg.to_le_bytes());
        }
        let mut a = 0u32;
        let mut pc = 0usize;
        for _ in 0..100_000 {
            let insn = program[pc];
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    let off = insn.k as usize;
                    a = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
                }
                BPF_ALU_AND_K => a &= insn.k,
                BPF_JMP_JA => pc += insn.k as usize,
                BPF_JMP_JEQ_K | BPF_JMP_JGT_K | BPF_JMP_JGE_K => {
                    let holds = match insn.code {
                        BPF_JMP_JEQ_K => a == insn.k,
                        BPF_JMP_JGT_K => a > insn.k,
                        _ => a >= insn.k,
                    };
                    pc += usize::from(if holds { insn.jt } else { insn.jf });
                }
                BPF_RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not return");
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    fn filter(json: &str) -> Filter {
        compile(&profile(json)).unwrap().filter
    }

    fn nr(name: &str) -> u32 {
        syscall_number(name).unwrap()
    }

    fn call(f: &Filter, name: &str, args: [u64; 6]) -> u32 {
        run(&f.program, AUDIT_ARCH_NATIVE, nr(name), args)
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM_RET: u32 = libc::SECCOMP_RET_ERRNO | 1;
    const ENOSYS_RET: u32 = libc::SECCOMP_RET_ERRNO | 38;

    #[test]
    fn errno_constants_match_the_kernel() {
        assert_eq!(ENOSYS, Action::Errno(u16::try_from(libc::ENOSYS).unwrap()));
        assert_eq!(EPERM, u32::try_from(libc::EPERM).unwrap());
    }

    #[test]
    fn default_allow_with_errno_rules() {
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdirat", "unlinkat"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28}
            ]}"#,
        );
        assert_eq!(call(&f, "mkdirat", [0; 6]), EPERM_RET);
        assert_eq!(call(&f, "unlinkat", [0; 6]), EPERM_RET);
        assert_eq!(call(&f, "getpid", [0; 6]), libc::SECCOMP_RET_ERRNO | 28);
        assert_eq!(call(&f, "read", [0; 6]), ALLOW);
        // An allowing default keeps syscalls the profile does not know allowed.
        assert_eq!(run(&f.program, AUDIT_ARCH_NATIVE, 1000, [0; 6]), ALLOW);
        assert_eq!(call(&f, "clone3", [0; 6]), ALLOW);
    }

    #[test]
    fn every_action_has_its_return_value() {
        let cases = [
            ("SCMP_ACT_KILL", libc::SECCOMP_RET_KILL_THREAD),
            ("SCMP_ACT_KILL_THREAD", libc::SECCOMP_RET_KILL_THREAD),
            ("SCMP_ACT_KILL_PROCESS", libc::SECCOMP_RET_KILL_PROCESS),
            ("SCMP_ACT_TRAP", libc::SECCOMP_RET_TRAP),
            ("SCMP_ACT_ERRNO", EPERM_RET),
            ("SCMP_ACT_TRACE", libc::SECCOMP_RET_TRACE | 1),
            ("SCMP_ACT_LOG", libc::SECCOMP_RET_LOG),
        ];
        for (name, ret) in cases {
            let f = filter(&format!(
                r#"{{"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{{"names": ["getppid"], "action": "{name}"}}]}}"#
            ));
            assert_eq!(call(&f, "getppid", [0; 6]), ret, "{name}");
            assert_eq!(call(&f, "getpid", [0; 6]), ALLOW, "{name}");
        }
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 7,
                "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert_eq!(call(&f, "getpid", [0; 6]), libc::SECCOMP_RET_TRACE | 7);
        assert_eq!(call(&f, "getppid", [0; 6]), ALLOW);
    }

    #[test]
    fn default_deny_with_allow_list() {
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13, "syscalls": [
                {"names": ["read", "write", "exit_group", "not_a_syscall"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]}"#,
        );
        assert_eq!(call(&f, "read", [0; 6]), ALLOW);
        assert_eq!(call(&f, "exit_group", [0; 6]), ALLOW);
        assert_eq!(call(&f, "getpid", [0; 6]), libc::SECCOMP_RET_ERRNO | 13);
        // Listed with the default action: the default action.
        assert_eq!(call(&f, "mount", [0; 6]), libc::SECCOMP_RET_ERRNO | 13);
        // Newer than anything the profile names, and clone3 it does not name: ENOSYS.
        let newest = [nr("read"), nr("write"), nr("exit_group"), nr("mount")]
            .into_iter()
            .max()
            .unwrap();
        assert_eq!(
            run(&f.program, AUDIT_ARCH_NATIVE, newest + 1, [0; 6]),
            ENOSYS_RET
        );
        assert_eq!(call(&f, "clone3", [0; 6]), ENOSYS_RET);
    }

    #[test]
    fn clone3_named_keeps_its_rule() {
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
            ]}"#,
        );
        assert_eq!(call(&f, "clone3", [0; 6]), EPERM_RET);
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}
            ]}"#,
        );
        assert_eq!(call(&f, "clone3", [0; 6]), ALLOW);
        assert_eq!(call(&f, "read", [0; 6]), EPERM_RET);
    }

    #[test]
    fn foreign_arch_and_x32_do_not_bypass() {
        let allow = filter(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        let deny = filter(
            r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS",
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        for arch in [0x4000_0003, 0x4000_0028, 0] {
            assert_eq!(run(&allow.program, arch, nr("getpid"), [0; 6]), ENOSYS_RET);
            assert_eq!(
                run(&deny.program, arch, nr("getpid"), [0; 6]),
                libc::SECCOMP_RET_KILL_PROCESS
            );
        }
        if let Some(bit) = X32_SYSCALL_BIT {
            let x32_getpid = bit | nr("getpid");
            assert_eq!(
                run(&allow.program, AUDIT_ARCH_NATIVE, x32_getpid, [0; 6]),
                ENOSYS_RET
            );
            assert_eq!(
                run(&deny.program, AUDIT_ARCH_NATIVE, x32_getpid, [0; 6]),
                libc::SECCOMP_RET_KILL_PROCESS
            );
        }
    }

    fn arg_rule(op: &str, value: u64, value_two: u64) -> Filter {
        filter(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {{"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                  "args": [{{"index": 2, "value": {value}, "valueTwo": {value_two},
                             "op": "{op}"}}]}}]}}"#
        ))
    }

    #[test]
    fn syscalls_skipped_by_a_tracer_get_the_default_action() {
        let allow = filter(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(
            run(&allow.program, AUDIT_ARCH_NATIVE, u32::MAX, [0; 6]),
            ALLOW
        );
        let deny = filter(
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert_eq!(
            run(&deny.program, AUDIT_ARCH_NATIVE, u32::MAX, [0; 6]),
            EPERM_RET
        );
    }

    #[test]
    fn argument_compares_are_64_bit() {
        let values: [u64; 12] = [
            0,
            1,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            0x2_0000_0000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX - 1,
            u64::MAX,
            0xdead_beef,
            0x1234_5678_9abc_def0,
        ];
        type Pred = fn(u64, u64, u64) -> bool;
        let ops: [(&str, Pred); 7] = [
            ("SCMP_CMP_EQ", |a, v, _| a == v),
            ("SCMP_CMP_NE", |a, v, _| a != v),
            ("SCMP_CMP_LT", |a, v, _| a < v),
            ("SCMP_CMP_LE", |a, v, _| a <= v),
            ("SCMP_CMP_GT", |a, v, _| a > v),
            ("SCMP_CMP_GE", |a, v, _| a >= v),
            ("SCMP_CMP_MASKED_EQ", |a, m, d| a & m == d),
        ];
        for (op, pred) in ops {
            for &v in &values {
                for &two in &[0, 1, 0x1_0000_0000, v] {
                    let f = arg_rule(op, v, two);
                    for &a in &values {
                        let want = if pred(a, v, two) { EPERM_RET } else { ALLOW };
                        let got = call(&f, "personality", [7, 7, a, 7, 7, 7]);
                        assert_eq!(got, want, "{op} arg={a:#x} value={v:#x} two={two:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn conditions_of_a_rule_all_hold_and_rules_of_a_syscall_are_alternatives() {
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 0, "value": 17, "op": "SCMP_CMP_EQ"}]}
            ]}"#,
        );
        assert_eq!(call(&f, "socket", [1, 1, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(&f, "socket", [1, 2, 0, 0, 0, 0]), EPERM_RET);
        assert_eq!(call(&f, "socket", [2, 5, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            call(&f, "socket", [17, 1, 0, 0, 0, 0]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(call(&f, "socket", [3, 1, 0, 0, 0, 0]), EPERM_RET);
    }

    #[test]
    fn the_most_restrictive_matching_rule_wins() {
        // An unconditional ALLOW listed first does not hide a narrower ERRNO.
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["kill"], "action": "SCMP_ACT_LOG"},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
                 "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6,
                 "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_GE"}]}
            ]}"#,
        );
        assert_eq!(
            call(&f, "kill", [1, 15, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ERRNO | 5
        );
        assert_eq!(
            call(&f, "kill", [1, 12, 0, 0, 0, 0]),
            libc::SECCOMP_RET_ERRNO | 6
        );
        assert_eq!(call(&f, "kill", [1, 9, 0, 0, 0, 0]), libc::SECCOMP_RET_LOG);
        assert_eq!(call(&f, "getpid", [0; 6]), ALLOW);
    }

    #[test]
    fn flags_are_passed() {
        let f = filter(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": [
                "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
        );
        assert_eq!(
            f.flags,
            libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
        assert!(serde_json::from_str::<LinuxSeccomp>(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}"#
        )
        .is_err());
    }

    #[test]
    fn unknown_names_are_skipped_and_reported() {
        let compiled = compile(&profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["no_such_call", "getpid", "no_such_call"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["other_arch_call"], "action": "SCMP_ACT_KILL"}
            ]}"#,
        ))
        .unwrap();
        assert_eq!(compiled.skipped, ["no_such_call", "other_arch_call"]);
        assert_eq!(call(&compiled.filter, "getpid", [0; 6]), EPERM_RET);
        // Nothing resolves: only the default action.
        let compiled = compile(&profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["no_such_call"], "action": "SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(call(&compiled.filter, "read", [0; 6]), EPERM_RET);
    }

    fn refused(json: &str) -> SeccompError {
        compile(&profile(json)).unwrap_err()
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let e = refused(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["write"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        assert_eq!(e.field, "linux.seccomp.syscalls[2].action");
        assert!(e.reason.contains("SCMP_ACT_NOTIFY"), "{e}");

        let e = refused(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
        assert_eq!(e.field, "linux.seccomp.defaultAction");

        let e =
            refused(r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/notify.sock"}"#);
        assert_eq!(e.field, "linux.seccomp.listenerPath");

        let e = refused(r#"{"defaultAction": "SCMP_ACT_KILL", "defaultErrnoRet": 1}"#);
        assert_eq!(e.field, "linux.seccomp.defaultErrnoRet");

        let e = refused(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4096}"#);
        assert_eq!(e.field, "linux.seccomp.defaultErrnoRet");

        let e = refused(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
        );
        assert_eq!(e.field, "linux.seccomp.syscalls[0].errnoRet");

        let e = refused(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        assert_eq!(e.field, "linux.seccomp.syscalls[0].args[1].index");

        let e = refused(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": [], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(e.field, "linux.seccomp.syscalls[0].names");

        let e = refused(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read", ""], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(e.field, "linux.seccomp.syscalls[0].names[1]");
    }

    #[test]
    fn oversized_programs_are_refused() {
        let rules: Vec<String> = (0..1200)
            .map(|i| {
                format!(
                    r#"{{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW",
                        "args": [{{"index": 1, "value": {i}, "op": "SCMP_CMP_EQ"}}]}}"#
                )
            })
            .collect();
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}}"#,
            rules.join(",")
        );
        let e = refused(&json);
        assert_eq!(e.field, "linux.seccomp");
        assert!(e.reason.contains("4096"), "{e}");
    }

    #[test]
    fn far_jumps_resolve() {
        // Many conditional syscalls: their blocks sit far from the dispatch.
        let rules: Vec<String> = ["read", "write", "openat", "close", "fstat", "mmap", "ioctl"]
            .iter()
            .flat_map(|name| {
                (0..40u64).map(move |i| {
                    format!(
                        r#"{{"names": ["{name}"], "action": "SCMP_ACT_ALLOW",
                            "args": [{{"index": 0, "value": {i}, "op": "SCMP_CMP_EQ"}}]}}"#
                    )
                })
            })
            .collect();
        let f = filter(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}}"#,
            rules.join(",")
        ));
        assert!(f.program.len() > 1000);
        for name in ["read", "ioctl"] {
            assert_eq!(call(&f, name, [39, 0, 0, 0, 0, 0]), ALLOW);
            assert_eq!(call(&f, name, [40, 0, 0, 0, 0, 0]), EPERM_RET);
        }
    }
}
