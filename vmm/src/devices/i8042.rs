//! A minimal i8042 keyboard controller: enough for the guest to reset the machine (command
//! 0xfe on port 0x64, what Linux does with `reboot=k`) and for the host to send
//! Ctrl-Alt-Del (the graceful shutdown path; it needs `CONFIG_SERIO_I8042` and
//! `CONFIG_KEYBOARD_ATKBD` in the guest).
//!
//! Ports: 0x60 data (bus offset 0), 0x64 status/command (bus offset 4).

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

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_TRANSLATE: u8 = 0x40;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;

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
    out: VecDeque<u8>,
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
        if self.out.len() < BUF_MAX {
            self.out.push_back(byte);
        }
        self.status |= SB_OUT_DATA_AVAIL;
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
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_AUX => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => self.push(0x01),
            CMD_SELF_TEST => self.push(0x55),
            CMD_TEST_KBD => self.push(0x00),
            CMD_TEST_AUX => self.push(0xff),
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
                let b = self.out.pop_front().unwrap_or(0);
                if self.out.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else {
                    self.kick_irq();
                }
                b
            }
            OFFSET_COMMAND => self.status,
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

    #[test]
    fn output_buffer_bounded() {
        let (mut d, _) = dev();
        for _ in 0..1000 {
            d.write(OFFSET_DATA, &[0xff]);
        }
        assert!(d.out.len() <= BUF_MAX);
    }
}
