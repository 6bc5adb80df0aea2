//! Waiting for a helper to create its Unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

use super::HypervisorError;
use crate::process::Helper;

/// Waits until `path` exists as a socket, failing early if `helper` exits.
pub(super) async fn wait_for_socket(
    helper: &mut Helper,
    path: &Path,
    timeout: Duration,
) -> Result<(), HypervisorError> {
    use std::os::unix::fs::FileTypeExt;
    let start = Instant::now();
    let mut pause = Duration::from_micros(500);
    loop {
        if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(());
        }
        if let Some(status) = helper.try_exited() {
            return Err(HypervisorError::ExitedEarly {
                name: helper.name(),
                status,
                log: helper.log_tail(5),
            });
        }
        if start.elapsed() > timeout {
            return Err(HypervisorError::SocketTimeout {
                name: helper.name(),
                path: path.to_path_buf(),
                timeout,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
