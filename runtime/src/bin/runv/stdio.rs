//! runv's own stdin for a container: read by a thread with blocking reads (runv's stdin is
//! shared with the shell, so it is never switched to non-blocking mode) and fed through a
//! socket pair to the library's copy loop.

use std::io::Read;
use std::os::unix::net::UnixStream;

use runv_runtime::agent::{AgentClient, AgentError};

/// Feeds runv's stdin to the process, then ends the process's stdin.
pub async fn copy_input(agent: AgentClient, container_id: String) -> Result<(), AgentError> {
    let transport = |e: std::io::Error| AgentError::Transport {
        method: "WriteStdin",
        reason: e.to_string(),
    };
    let (reader, mut writer) = UnixStream::pair().map_err(transport)?;
    reader.set_nonblocking(true).map_err(transport)?;
    let reader = tokio::net::UnixStream::from_std(reader).map_err(transport)?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if std::io::Write::write_all(&mut writer, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(transport)?;
    runv_runtime::stdio::copy_input(agent, container_id, String::new(), reader).await
}
