//! Start-up of both monitors, time zero being just before the spawn:
//! * payload: until the payload's first COM1 byte is read from the monitor's stdout pipe (the
//!   payload writes it as its first instruction; same code, same port, same pipe for both), plus
//!   the memory of the idle VM right after, and runv-vmm's own boot-timer mark;
//! * kernel: until the first whole line of the guest kernel's console output.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::child::Guard;
use crate::memory::{self, Usage};
use crate::monitors::{Monitor, Setup};

/// One run of the payload on one monitor.
pub struct PayloadRun {
    pub first_byte_ms: f64,
    /// runv-vmm only: the boot-timer mark as runv-vmm logs it (time since its own start).
    pub boot_mark_ms: Option<f64>,
    pub memory: Usage,
}

/// The idle VM settles this long before its memory is read.
const SETTLE: Duration = Duration::from_millis(200);

pub fn payload_run(setup: &Setup, monitor: Monitor, kernel: &Path) -> Result<PayloadRun> {
    let mut vm = Guard::spawn(monitor.name(), &mut setup.command(monitor, kernel, "bench"))?;
    let mut out = vm.stdout()?;
    let (at, first) =
        match crate::child::read_until(&mut out, Duration::from_secs(20), |b| !b.is_empty()) {
            Ok(v) => v,
            Err(e) => return Err(e.context(vm.kill_and_stderr())),
        };
    let first_byte_ms = ms(at.duration_since(vm.started));
    // The newline follows the boot-timer mark: once it is there, the mark is logged.
    if !first.contains(&b'\n') {
        crate::child::read_until(&mut out, Duration::from_secs(20), |b| b.contains(&b'\n'))?;
    }
    std::thread::sleep(SETTLE);
    vm.check_running()?;
    let memory = memory::usage(vm.pid(), setup.memory_mib)
        .with_context(|| format!("memory of {}", monitor.name()))?;
    let err = vm.kill_and_stderr();
    let boot_mark_ms = match monitor {
        Monitor::RunvVmm => {
            Some(boot_mark_us(&err).context("no boot-timer mark on stderr")? / 1000.0)
        }
        Monitor::Qemu => None,
    };
    Ok(PayloadRun {
        first_byte_ms,
        boot_mark_ms,
        memory,
    })
}

/// `runv-vmm: boot-timer: guest mark 123 at 3514 us since start` -> 3514.
fn boot_mark_us(stderr: &str) -> Option<f64> {
    stderr
        .lines()
        .find_map(|l| l.split_once("guest mark 123 at "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The kernel's first console line and the time it took.
pub fn kernel_run(setup: &Setup, monitor: Monitor, kernel: &Path) -> Result<(f64, String)> {
    let cmdline = "earlyprintk=ttyS0 loglevel=7";
    let mut vm = Guard::spawn(monitor.name(), &mut setup.command(monitor, kernel, cmdline))?;
    let mut out = vm.stdout()?;
    let got = crate::child::read_until(&mut out, Duration::from_secs(60), |b| b.contains(&b'\n'));
    let (at, bytes) = match got {
        Ok(v) => v,
        Err(e) => return Err(e.context(vm.kill_and_stderr())),
    };
    // The guest will not finish booting on kvm-pvm: stop it now.
    drop(vm.kill_and_stderr());
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().next().unwrap_or_default().trim().to_string();
    Ok((ms(at.duration_since(vm.started)), line))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_mark_is_parsed_from_the_log_line() {
        let err = "runv-vmm: VM built in 812 us, kernel command line: x\n\
                   runv-vmm: boot-timer: guest mark 123 at 3514 us since start\n";
        assert_eq!(boot_mark_us(err), Some(3514.0));
        assert_eq!(boot_mark_us("nothing"), None);
    }
}
