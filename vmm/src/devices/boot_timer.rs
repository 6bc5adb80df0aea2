//! Boot-timer marker: a guest write to port 0x440 (x86_64) or MMIO 0x0904_0000 (aarch64)
//! is logged with the time since the monitor started, so boot time can be measured from
//! inside the guest (e.g. `/init` writes one byte as its first action).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::device_manager::bus::BusDevice;

/// One marker write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootMark {
    /// Byte the guest wrote.
    pub value: u8,
    /// Time since the monitor started.
    pub since_start: Duration,
}

/// The marker device.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    marks: Arc<Mutex<Vec<BootMark>>>,
}

/// Marks kept at most (the guest cannot grow the list without bound).
const MAX_MARKS: usize = 64;

impl BootTimer {
    /// A timer counting from `start`; marks are appended to `marks`.
    pub fn new(start: Instant, marks: Arc<Mutex<Vec<BootMark>>>) -> Self {
        BootTimer { start, marks }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(value) = data.first().copied() else {
            return;
        };
        let since_start = self.start.elapsed();
        crate::log_line!(
            "boot-timer: guest mark {value} at {} us since start",
            since_start.as_micros()
        );
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if marks.len() < MAX_MARKS {
            marks.push(BootMark { value, since_start });
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn records_marks_bounded() {
        let marks = Arc::new(Mutex::new(Vec::new()));
        let mut t = BootTimer::new(Instant::now(), Arc::clone(&marks));
        for _ in 0..100 {
            t.write(0, &[123]);
        }
        t.write(0, &[]);
        let m = marks.lock().unwrap();
        assert_eq!(m.len(), MAX_MARKS);
        assert_eq!(m[0].value, 123);
    }
}
