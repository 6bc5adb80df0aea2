//! A minimal i8042 keyboard controller: enough for the guest to reset the machine (command
//! 0xfe on port 0x64, what Linux does with `reboot=k`) and for the host to send
//! Ctrl-Alt-Del (the graceful shutdown path; it needs `CONFIG_SERIO_I8042` and
//! `CONFIG_KEYBOARD_ATKBD` in the guest).
//!
//! Ports: 0x60 data (bus offset 0), 0x64 status/command (bus offset 4).
//!
//! There is a keyboard port and no usable AUX (mouse) port. Every command Linux waits on is
//! answered at once, so its probe does not stall: the AUX loopback answers with a byte
//! other than the one written and the AUX interface test reports a stuck line, which makes
//! Linux give the AUX port up at its first check (an AUX port that passed would be tested
//! for interrupt delivery on IRQ 12 with a 250 ms timeout). The keyboard answers the
//! identification and settings commands of the AT keyboard driver.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::device_manager::bus::BusDevice;
use crate::devices::IrqTrigger;
use crate::vstate::vcpu::{ExitReason, VmExitNotifier};

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_I8042_CMD_DATA: u8 = 0x08;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_KBD_ENABLED: u8 = 0x10;
const SB_AUX_DATA: u8 = 0x20;

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_TRANSLATE: u8 = 0x40;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
/// AUX interface test result: data line stuck low.
const AUX_TEST_DATA_STUCK_LOW: u8 = 0x03;

/// Scan codes of Ctrl, Alt, Del pressed then released, in set 2 (what a keyboard sends).
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// The same in set 1, what a controller with translation on (Linux's default) delivers.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Bytes the output buffer holds at most.
const BUF_MAX: usize = 16;
const _: () = assert!(CTRL_ALT_DEL_SET2.len() <= BUF_MAX);

/// The controller.
#[derive(Debug)]
pub struct I8042 {
    status: u8,
    control: u8,
    pending_cmd: Option<u8>,
    /// The output buffer: each byte, and whether it comes from the AUX port.
    out: VecDeque<(u8, bool)>,
    irq: IrqTrigger,
    exit: Arc<VmExitNotifier>,
}

impl I8042 {
    /// A controller raising `irq` and reporting a reset through `exit`.
    pub fn new(irq: IrqTrigger, exit: Arc<VmExitNotifier>) -> Self {
        I8042 {
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT | CB_TRANSLATE,
            pending_cmd: None,
            out: VecDeque::new(),
            irq,
            exit,
        }
    }

    fn push(&mut self, byte: u8) {
        self.push_from(byte, false);
    }

    fn push_from(&mut self, byte: u8, aux: bool) {
        if self.out.len() < BUF_MAX {
            self.out.push_back((byte, aux));
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    /// The status register: the AUX-data bit describes the byte at the head of the buffer.
    fn status(&self) -> u8 {
        match self.out.front() {
            Some((_, true)) => self.status | SB_AUX_DATA,
            _ => self.status & !SB_AUX_DATA,
        }
    }

    fn kick_irq(&self) {
        if !self.out.is_empty() && self.control & CB_KBD_INT != 0 {
            // The guest polls the status register as well, so a lost edge is not fatal.
            let _ = self.irq.trigger();
        }
    }

    /// Queues Ctrl-Alt-Del for the guest keyboard driver.
    pub fn send_ctrl_alt_del(&mut self) {
        let codes: &[u8] = if self.control & CB_TRANSLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        for b in codes {
            self.push(*b);
        }
        self.kick_irq();
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_AUX | CMD_AUX_LOOP => {
                self.pending_cmd = Some(cmd);
            }
            CMD_READ_OUTP => self.push(0x01),
            CMD_SELF_TEST => self.push(0x55),
            CMD_TEST_KBD => self.push(0x00),
            CMD_TEST_AUX => self.push(AUX_TEST_DATA_STUCK_LOW),
            CMD_DISABLE_KBD => self.status &= !SB_KBD_ENABLED,
            CMD_ENABLE_KBD => self.status |= SB_KBD_ENABLED,
            CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => self
                .exit
                .notify(ExitReason::GuestShutdown("i8042 reset".to_string())),
            _ => {}
        }
        self.status |= SB_I8042_CMD_DATA;
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_I8042_CMD_DATA;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => {
                // Bit 0 low pulses the CPU reset line.
                if value & 1 == 0 {
                    self.exit
                        .notify(ExitReason::GuestShutdown("i8042 reset".to_string()));
                }
            }
            Some(CMD_WRITE_AUX) => self.push(0xfe), // no mouse: resend
            // A working loopback would echo the byte, as if the mouse had sent it.
            Some(CMD_AUX_LOOP) => self.push_from(!value, true),
            _ => match value {
                0xff => {
                    self.push(KBD_ACK);
                    self.push(KBD_RESET_OK);
                }
                0xf2 => {
                    self.push(KBD_ACK);
                    self.push(0xab);
                    self.push(0x83);
                }
                _ => self.push(KBD_ACK),
            },
        }
        self.kick_irq();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            OFFSET_DATA => {
                let b = self.out.pop_front().map_or(0, |(b, _)| b);
                if self.out.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else {
                    self.kick_irq();
                }
                b
            }
            OFFSET_COMMAND => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(value) = data.first().copied() else {
            return;
        };
        match offset {
            OFFSET_COMMAND => self.command(value),
            OFFSET_DATA => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<VmExitNotifier>) {
        let exit = Arc::new(VmExitNotifier::new().unwrap());
        (
            I8042::new(IrqTrigger::new().unwrap(), Arc::clone(&exit)),
            exit,
        )
    }

    #[test]
    fn reset_command_ends_vm() {
        let (mut d, exit) = dev();
        d.write(OFFSET_COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(
            exit.reason(),
            Some(ExitReason::GuestShutdown("i8042 reset".into()))
        );
        assert_eq!(exit.event().read().unwrap(), 1);
    }

    #[test]
    fn self_test_and_control_byte() {
        let (mut d, _) = dev();
        d.write(OFFSET_COMMAND, &[CMD_SELF_TEST]);
        let mut b = [0u8];
        d.read(OFFSET_COMMAND, &mut b);
        assert_ne!(b[0] & SB_OUT_DATA_AVAIL, 0);
        d.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x55);
        d.write(OFFSET_COMMAND, &[CMD_WRITE_CTR]);
        d.write(OFFSET_DATA, &[0x45]);
        d.write(OFFSET_COMMAND, &[CMD_READ_CTR]);
        d.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x45);
    }

    #[test]
    fn ctrl_alt_del_raises_irq() {
        let (mut d, exit) = dev();
        d.send_ctrl_alt_del();
        assert_eq!(d.irq.0.read().unwrap(), 1);
        let mut b = [0u8];
        d.read(OFFSET_DATA, &mut b);
        // Translation is on by default: set 1 codes.
        assert_eq!(b[0], 0x1d);
        assert!(exit.reason().is_none());
        let mut all = vec![b[0]];
        for _ in 0..7 {
            d.read(OFFSET_DATA, &mut b);
            all.push(b[0]);
        }
        assert_eq!(all, CTRL_ALT_DEL_SET1);
        // Without translation: set 2.
        d.write(OFFSET_COMMAND, &[CMD_WRITE_CTR]);
        d.write(OFFSET_DATA, &[CB_KBD_INT]);
        d.send_ctrl_alt_del();
        d.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x14);
    }

    /// Linux's `i8042_command`: the command, its parameter bytes, then each answer byte,
    /// which must be there at once (Linux would poll for up to 500 ms). `None` when an
    /// answer is missing, or for the AUX loopback, when it does not come from the AUX port.
    fn linux_command(d: &mut I8042, cmd: u8, params: &[u8], answers: usize) -> Option<Vec<u8>> {
        d.write(OFFSET_COMMAND, &[cmd]);
        for p in params {
            d.write(OFFSET_DATA, &[*p]);
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            let mut st = [0u8];
            d.read(OFFSET_COMMAND, &mut st);
            if st[0] & SB_OUT_DATA_AVAIL == 0 || (cmd == CMD_AUX_LOOP && st[0] & SB_AUX_DATA == 0) {
                return None;
            }
            let mut b = [0u8];
            d.read(OFFSET_DATA, &mut b);
            out.push(b[0]);
        }
        Some(out)
    }

    /// A byte to the keyboard (through the data port), answered at once.
    fn kbd_command(d: &mut I8042, byte: u8, answers: usize) -> Vec<u8> {
        d.write(OFFSET_DATA, &[byte]);
        (0..answers)
            .map(|_| {
                let mut b = [0u8];
                d.read(OFFSET_DATA, &mut b);
                b[0]
            })
            .collect()
    }

    fn buffer_empty(d: &mut I8042) -> bool {
        let mut st = [0u8];
        d.read(OFFSET_COMMAND, &mut st);
        st[0] & SB_OUT_DATA_AVAIL == 0
    }

    /// The probe of Linux 6.1's i8042 and atkbd drivers without `i8042.*` options, step by
    /// step: every answer is there at once, the AUX port is given up at its first check
    /// (before the AUX interrupt test), nothing is left over for the keyboard driver, and
    /// Ctrl-Alt-Del then arrives as translated set 1 codes with an interrupt.
    #[test]
    fn linux_probe_does_not_wait() {
        const CTR_KBDDIS: u8 = 0x10;
        let (mut d, _) = dev();
        assert!(
            buffer_empty(&mut d),
            "i8042_controller_check: no stale output"
        );
        // i8042_controller_init: a stable CTR, then the keyboard disabled.
        let ctr = linux_command(&mut d, CMD_READ_CTR, &[], 1).unwrap()[0];
        assert_eq!(linux_command(&mut d, CMD_READ_CTR, &[], 1).unwrap()[0], ctr);
        assert_ne!(ctr & CB_TRANSLATE, 0, "translation on");
        let ctr = (ctr | CTR_KBDDIS) & !CB_KBD_INT;
        linux_command(&mut d, CMD_WRITE_CTR, &[ctr], 0).unwrap();
        assert!(buffer_empty(&mut d));
        // i8042_check_aux: the loopback fails (answered, but not the byte written)...
        let looped = linux_command(&mut d, CMD_AUX_LOOP, &[0x5a], 1).unwrap();
        assert_ne!(looped, [0x5a]);
        // ...so the interface test decides, and reports an error: no AUX port.
        let test = linux_command(&mut d, CMD_TEST_AUX, &[], 1).unwrap()[0];
        assert!(test != 0 && test != 0xfa && test != 0xff, "{test:#x}");
        assert!(buffer_empty(&mut d));
        // i8042_enable_kbd_port.
        let ctr = (ctr & !CTR_KBDDIS) | CB_KBD_INT;
        linux_command(&mut d, CMD_WRITE_CTR, &[ctr], 0).unwrap();
        // atkbd_probe and atkbd_activate: GETID, RESET_DIS, SETLEDS, SETREP, ENABLE.
        assert_eq!(kbd_command(&mut d, 0xf2, 3), [KBD_ACK, 0xab, 0x83]);
        assert_eq!(kbd_command(&mut d, 0xf5, 1), [KBD_ACK]);
        for (cmd, arg) in [(0xed, 0x00), (0xf3, 0x00)] {
            assert_eq!(kbd_command(&mut d, cmd, 1), [KBD_ACK]);
            assert_eq!(kbd_command(&mut d, arg, 1), [KBD_ACK]);
        }
        assert_eq!(kbd_command(&mut d, 0xf4, 1), [KBD_ACK]);
        assert!(buffer_empty(&mut d));
        let _ = d.irq.0.read();
        d.send_ctrl_alt_del();
        assert_eq!(d.irq.0.read().unwrap(), 1);
        let mut got = Vec::new();
        while !buffer_empty(&mut d) {
            let mut b = [0u8];
            d.read(OFFSET_DATA, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL_SET1);
    }

    #[test]
    fn output_buffer_bounded() {
        let (mut d, _) = dev();
        for _ in 0..1000 {
            d.write(OFFSET_DATA, &[0xff]);
        }
        assert!(d.out.len() <= BUF_MAX);
    }
}
