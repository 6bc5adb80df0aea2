//! Moving a container process's stdio between runv's own stdio and the guest agent.

use std::io::Read;

use runv_runtime::agent::{AgentClient, AgentError};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Bytes read from stdin in one go.
const STDIN_CHUNK: usize = 64 * 1024;

/// Copies the process's stdout (or stderr) to `out` until the guest reports end of stream.
pub async fn copy_output<W: AsyncWrite + Unpin>(
    agent: AgentClient,
    container_id: String,
    stderr: bool,
    mut out: W,
) -> Result<(), AgentError> {
    loop {
        let data = agent.read_output(&container_id, "", stderr).await?;
        if data.is_empty() {
            return Ok(());
        }
        if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
            // Whoever reads runv's output went away; the rest is dropped, as a pipe would.
            tracing::debug!(stderr, "local output closed");
            return Ok(());
        }
    }
}

/// Feeds runv's stdin to the process, then ends the process's stdin.
///
/// Stdin is read by a thread of its own with blocking reads: runv's stdin is shared with the
/// shell, so it is never switched to non-blocking mode.
pub async fn copy_input(agent: AgentClient, container_id: String) -> Result<(), AgentError> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                let mut buf = vec![0u8; STDIN_CHUNK];
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(buf).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(|e| AgentError::Transport {
            method: "WriteStdin",
            reason: e.to_string(),
        })?;
    while let Some(chunk) = rx.recv().await {
        agent.write_stdin(&container_id, "", chunk).await?;
    }
    agent.close_stdin(&container_id, "").await
}
