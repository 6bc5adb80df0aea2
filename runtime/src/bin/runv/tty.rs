//! The local terminal: its size, and raw mode while a container's tty is attached to it.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false)
}

nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);

/// Rows and columns of the terminal behind `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own; fd is a live descriptor.
    let ok = unsafe { get_winsize(fd.as_raw_fd(), &mut ws) }.is_ok();
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The size of whichever of stdin and stdout is a terminal.
pub fn local_window_size() -> Option<(u16, u16)> {
    window_size(std::io::stdin().as_fd()).or_else(|| window_size(std::io::stdout().as_fd()))
}

/// Raw mode on stdin, restored when dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin into raw mode if it is a terminal; `None` if it is not.
    pub fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        if !is_terminal(stdin.as_fd()) {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}
