//! A small eBPF instruction encoder and the bpf(2) calls that load a cgroup device program
//! and attach it to (or detach it from) a cgroup v2 directory.
//!
//! Only what device programs need: 32-bit loads from the context, a few ALU operations,
//! conditional jumps against immediates and registers, `r0 = imm` and `exit`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// `bpf(2)` commands (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`, the attach type of device programs.
const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: several programs on one cgroup, all of which must allow.
const F_ALLOW_MULTI: u32 = 2;

// Instruction classes, sizes, modes, operations and sources.
const CLASS_LDX: u8 = 0x01;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU: u8 = 0x04;
const CLASS_ALU64: u8 = 0x07;
const SIZE_W: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const OP_AND: u8 = 0x50;
const OP_RSH: u8 = 0x70;
const OP_MOV: u8 = 0xb0;
const OP_JEQ: u8 = 0x10;
const OP_JNE: u8 = 0x50;
const OP_EXIT: u8 = 0x90;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;

/// An eBPF register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    R0 = 0,
    R1 = 1,
    R2 = 2,
    R3 = 3,
    R4 = 4,
    R5 = 5,
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    dst: Reg,
    src: Reg,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        Self {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`.
    pub const fn load_word(dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(CLASS_LDX | MODE_MEM | SIZE_W, dst, src, off, 0)
    }

    /// `dst &= imm` (32-bit).
    pub const fn and32_imm(dst: Reg, imm: i32) -> Self {
        Self::new(CLASS_ALU | OP_AND | SRC_K, dst, Reg::R0, 0, imm)
    }

    /// `dst >>= imm` (32-bit, logical).
    pub const fn rsh32_imm(dst: Reg, imm: i32) -> Self {
        Self::new(CLASS_ALU | OP_RSH | SRC_K, dst, Reg::R0, 0, imm)
    }

    /// `dst = src` (32-bit).
    pub const fn mov32_reg(dst: Reg, src: Reg) -> Self {
        Self::new(CLASS_ALU | OP_MOV | SRC_X, dst, src, 0, 0)
    }

    /// `dst = imm` (64-bit).
    pub const fn mov64_imm(dst: Reg, imm: i32) -> Self {
        Self::new(CLASS_ALU64 | OP_MOV | SRC_K, dst, Reg::R0, 0, imm)
    }

    /// `if dst != imm goto pc + 1 + off`.
    pub const fn jne_imm(dst: Reg, imm: i32, off: i16) -> Self {
        Self::new(CLASS_JMP | OP_JNE | SRC_K, dst, Reg::R0, off, imm)
    }

    /// `if dst == imm goto pc + 1 + off`.
    pub const fn jeq_imm(dst: Reg, imm: i32, off: i16) -> Self {
        Self::new(CLASS_JMP | OP_JEQ | SRC_K, dst, Reg::R0, off, imm)
    }

    /// `if dst != src goto pc + 1 + off`.
    pub const fn jne_reg(dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(CLASS_JMP | OP_JNE | SRC_X, dst, src, off, 0)
    }

    /// `return r0`.
    pub const fn exit() -> Self {
        Self::new(CLASS_JMP | OP_EXIT, Reg::R0, Reg::R0, 0, 0)
    }

    /// Whether this is a conditional jump, whose offset is fixed up once the code after it
    /// is known.
    pub fn is_jump(&self) -> bool {
        self.code & 0x07 == CLASS_JMP && self.code & 0xf0 != OP_EXIT
    }

    /// Sets the jump offset.
    pub fn set_offset(&mut self, off: i16) {
        self.off = off;
    }

    /// The kernel's 8-byte encoding (little-endian fields, registers in one byte with the
    /// destination in the low nibble).
    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = self.code;
        out[1] = (self.dst as u8) | ((self.src as u8) << 4);
        out[2..4].copy_from_slice(&self.off.to_le_bytes());
        out[4..8].copy_from_slice(&self.imm.to_le_bytes());
        out
    }
}

/// The bytes of a program, as BPF_PROG_LOAD takes them.
pub fn encode(program: &[Insn]) -> Vec<u8> {
    program.iter().flat_map(Insn::encode).collect()
}

/// The leading part of `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`;
/// the kernel treats the missing tail as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`: enough for the id.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a live, properly sized `#[repr(C)]` prefix of `union bpf_attr`
    // for `cmd`, and its size is passed along, so the kernel reads (and, for info
    // queries, writes) only within it and within the buffers it points to, which the
    // callers keep alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    Errno::result(ret)
}

/// A loaded device program: its fd keeps it alive, its id names it.
#[derive(Debug)]
pub struct DeviceProgram {
    fd: OwnedFd,
    id: u32,
}

impl DeviceProgram {
    /// Loads `program` as a BPF_PROG_TYPE_CGROUP_DEVICE program. Loaded without a
    /// verifier log first (a log that outgrows its buffer fails the load); when the
    /// verifier refuses it, loaded again with the log, which the error then carries.
    pub fn load(program: &[Insn]) -> Result<Self, (Errno, String)> {
        let bytes = encode(program);
        let fd = match load_raw(&bytes, None) {
            Ok(fd) => fd,
            Err(err) => {
                let mut log = vec![0u8; 256 * 1024];
                let log = match load_raw(&bytes, Some(&mut log)) {
                    // Not refused the second time: report the first failure alone.
                    Ok(_) => String::new(),
                    Err(_) => {
                        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                        String::from_utf8_lossy(&log[..end]).trim().to_string()
                    }
                };
                return Err((err, log));
            }
        };
        let id = prog_id(fd.as_fd()).unwrap_or(0);
        Ok(Self { fd, id })
    }

    /// The kernel's id of the program (0 when it could not be read).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Attaches the program to the cgroup open at `cgroup`, beside any others
    /// (BPF_F_ALLOW_MULTI).
    pub fn attach(&self, cgroup: BorrowedFd<'_>) -> Result<(), Errno> {
        let mut attr = self.attach_attr(cgroup);
        attr.attach_flags = F_ALLOW_MULTI;
        bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
    }

    /// Detaches the program from the cgroup open at `cgroup`.
    pub fn detach(&self, cgroup: BorrowedFd<'_>) -> Result<(), Errno> {
        let mut attr = self.attach_attr(cgroup);
        bpf(BPF_PROG_DETACH, &mut attr).map(drop)
    }

    fn attach_attr(&self, cgroup: BorrowedFd<'_>) -> AttachAttr {
        AttachAttr {
            target_fd: fd_u32(cgroup.as_raw_fd()),
            attach_bpf_fd: fd_u32(self.fd.as_raw_fd()),
            attach_type: ATTACH_CGROUP_DEVICE,
            ..Default::default()
        }
    }
}

/// One BPF_PROG_LOAD of the encoded program, with the verifier's log in `log` if given.
fn load_raw(bytes: &[u8], log: Option<&mut Vec<u8>>) -> Result<OwnedFd, Errno> {
    let license = c"Apache-2.0";
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(bytes.len() / 8).map_err(|_| Errno::E2BIG)?,
        insns: bytes.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: ATTACH_CGROUP_DEVICE,
        ..Default::default()
    };
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    attr.prog_name[..10].copy_from_slice(b"runv_devcg");
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    let raw = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn fd_u32(fd: i32) -> u32 {
    u32::try_from(fd).unwrap_or(u32::MAX)
}

fn prog_id(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(fd.as_raw_fd()),
        info_len: u32::try_from(std::mem::size_of::<ProgInfoHead>()).unwrap_or(0),
        info: &mut info as *mut ProgInfoHead as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_bytes() {
        assert_eq!(
            Insn::load_word(Reg::R2, Reg::R1, 0).encode(),
            [0x61, 0x12, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::load_word(Reg::R5, Reg::R1, 8).encode(),
            [0x61, 0x15, 8, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::and32_imm(Reg::R2, 0xffff).encode(),
            [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0]
        );
        assert_eq!(
            Insn::rsh32_imm(Reg::R3, 16).encode(),
            [0x74, 0x03, 0, 0, 16, 0, 0, 0]
        );
        assert_eq!(
            Insn::mov32_reg(Reg::R1, Reg::R3).encode(),
            [0xbc, 0x31, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::mov64_imm(Reg::R0, 1).encode(),
            [0xb7, 0x00, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            Insn::jne_imm(Reg::R4, 136, 3).encode(),
            [0x55, 0x04, 3, 0, 136, 0, 0, 0]
        );
        assert_eq!(
            Insn::jne_reg(Reg::R1, Reg::R3, -1).encode(),
            [0x5d, 0x31, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::jeq_imm(Reg::R1, 0, 2).encode(),
            [0x15, 0x01, 2, 0, 0, 0, 0, 0]
        );
        assert_eq!(Insn::exit().encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_refused_program_reports_the_verifier_log() {
        // Loading needs CAP_BPF (or CAP_SYS_ADMIN); the agent runs as root.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: program not loaded");
            return;
        }
        // Returns r0 without ever setting it.
        let (errno, log) = DeviceProgram::load(&[Insn::exit()]).unwrap_err();
        assert_eq!(errno, Errno::EACCES);
        assert!(log.contains("R0"), "{log}");
    }

    #[test]
    fn jumps_are_recognised() {
        assert!(Insn::jne_imm(Reg::R2, 1, 0).is_jump());
        assert!(Insn::jne_reg(Reg::R1, Reg::R3, 0).is_jump());
        assert!(Insn::jeq_imm(Reg::R1, 0, 0).is_jump());
        assert!(!Insn::exit().is_jump());
        assert!(!Insn::mov64_imm(Reg::R0, 0).is_jump());
        assert!(!Insn::load_word(Reg::R2, Reg::R1, 0).is_jump());
    }
}
