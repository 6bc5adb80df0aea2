//! Moving a container process's stdio between a local reader or writer (a terminal, a pipe,
//! containerd's FIFOs) and the guest agent's stream RPCs.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::agent::{AgentClient, AgentError};

/// Bytes read from the local input in one go.
const INPUT_CHUNK: usize = 64 * 1024;

/// Copies the process's stdout (or stderr) to `out` until the guest reports end of stream.
/// Output whose reader went away is dropped, as a pipe would.
pub async fn copy_output<W: AsyncWrite + Unpin>(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    stderr: bool,
    mut out: W,
) -> Result<(), AgentError> {
    loop {
        let data = agent.read_output(&container_id, &exec_id, stderr).await?;
        if data.is_empty() {
            let _ = out.shutdown().await;
            return Ok(());
        }
        if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
            tracing::debug!(container = %container_id, stderr, "local output closed");
            return Ok(());
        }
    }
}

/// Feeds `input` to the process's stdin until it ends, then ends the process's stdin.
pub async fn copy_input<R: AsyncRead + Unpin>(
    agent: AgentClient,
    container_id: String,
    exec_id: String,
    mut input: R,
) -> Result<(), AgentError> {
    let mut buf = vec![0u8; INPUT_CHUNK];
    loop {
        match input.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                agent
                    .write_stdin(&container_id, &exec_id, buf[..n].to_vec())
                    .await?
            }
        }
    }
    agent.close_stdin(&container_id, &exec_id).await
}
