//! Hybrid vsock: the host end of a guest's vsock device is a Unix socket. The host connects,
//! writes `CONNECT <port>\n` and reads `OK <host port>\n`; after that the stream reaches the
//! guest's listener on that port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Errors of one hybrid-vsock connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum HvsockError {
    /// The Unix socket could not be reached.
    #[error("Connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed: usually nothing listens on the port in the guest yet.
    #[error("Vsock handshake for port {port}: {reason}")]
    Handshake {
        /// The guest port.
        port: u32,
        /// What happened.
        reason: String,
    },
}

/// The longest `OK ...` line runv accepts.
const MAX_REPLY: usize = 64;

/// Opens a stream to `port` in the guest through the hybrid-vsock socket `uds`.
pub async fn connect_hybrid_vsock(
    uds: &Path,
    port: u32,
    handshake_timeout: Duration,
) -> Result<UnixStream, HvsockError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| HvsockError::Connect {
            path: uds.to_path_buf(),
            source,
        })?;
    let handshake = async {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await?;
        // Read byte by byte: whatever follows the newline belongs to the guest's stream.
        let mut line = Vec::with_capacity(16);
        loop {
            let byte = stream.read_u8().await?;
            if byte == b'\n' {
                break;
            }
            line.push(byte);
            if line.len() > MAX_REPLY {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "reply too long",
                ));
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&line).into_owned())
    };
    let reply = match tokio::time::timeout(handshake_timeout, handshake).await {
        Err(_) => {
            return Err(HvsockError::Handshake {
                port,
                reason: "no reply".to_string(),
            })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(HvsockError::Handshake {
                port,
                reason: "connection closed: nothing listens on the port".to_string(),
            })
        }
        Ok(Err(e)) => {
            return Err(HvsockError::Handshake {
                port,
                reason: e.to_string(),
            })
        }
        Ok(Ok(reply)) => reply,
    };
    if !reply.starts_with("OK ") {
        return Err(HvsockError::Handshake {
            port,
            reason: format!("unexpected reply {reply:?}"),
        });
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake device end: answers the handshake like a hybrid-vsock device, then echoes.
    async fn fake_device(listener: UnixListener, reply: &'static str) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 13];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"CONNECT 1024\n");
        s.write_all(reply.as_bytes()).await.unwrap();
        let mut rest = [0u8; 4];
        if s.read_exact(&mut rest).await.is_ok() {
            s.write_all(&rest).await.unwrap();
        }
    }

    #[tokio::test]
    async fn handshake_then_stream_keeps_following_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let device = tokio::spawn(fake_device(listener, "OK 1073741824\n"));
        let mut s = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        device.await.unwrap();
    }

    #[tokio::test]
    async fn refused_port_and_bad_reply_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let device = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"NO\n").await.unwrap();
        });
        let err = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nothing listens"), "{err}");
        let err = connect_hybrid_vsock(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unexpected reply"), "{err}");
        device.await.unwrap();
        let missing = dir.path().join("missing.sock");
        assert!(matches!(
            connect_hybrid_vsock(&missing, 1024, Duration::from_secs(1)).await,
            Err(HvsockError::Connect { .. })
        ));
    }
}
