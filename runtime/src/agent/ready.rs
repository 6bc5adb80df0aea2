//! The agent's readiness notification: once it serves, the agent connects to the host on
//! vsock port `AGENT_READY_PORT`, which the hybrid-vsock device delivers to the Unix socket
//! `<uds>_<port>`. The host listens there before the VM starts, so it learns the moment the
//! agent is up without polling the guest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runv_agent_protocol::{AGENT_READY_LINE, AGENT_READY_PORT};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;

/// The host end of the readiness notification.
#[derive(Debug)]
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Listens at `<uds>_<AGENT_READY_PORT>`. Call before the VM starts.
    pub fn bind(uds: &Path) -> std::io::Result<Self> {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{AGENT_READY_PORT}"));
        let path = PathBuf::from(path);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Self { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for one connection that carries the readiness line.
    pub async fn accept_ready(&self) -> std::io::Result<()> {
        let (mut stream, _) = self.listener.accept().await?;
        let mut line = [0u8; AGENT_READY_LINE.len()];
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "readiness line"))??;
        if line != AGENT_READY_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "unexpected readiness line {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn accepts_the_ready_line_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let ready = ReadyListener::bind(&uds).unwrap();
        assert!(ready.path().ends_with("vsock.sock_1025"));
        let path = ready.path().to_path_buf();
        let p = path.clone();
        let guest = tokio::spawn(async move {
            let mut s = tokio::net::UnixStream::connect(&p).await.unwrap();
            s.write_all(b"HELLO\n").await.unwrap();
            let mut s = tokio::net::UnixStream::connect(&p).await.unwrap();
            s.write_all(AGENT_READY_LINE).await.unwrap();
        });
        assert!(ready.accept_ready().await.is_err());
        ready.accept_ready().await.unwrap();
        guest.await.unwrap();
        drop(ready);
        assert!(!path.exists());
    }
}
