//! The control socket server: accepts clients, splits their input into lines, answers.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::request::{parse_request, ApiRequest};

/// Longest request line.
const MAX_LINE: usize = 64 * 1024;
/// Most clients at once.
const MAX_CLIENTS: usize = 16;
const LISTENER: u64 = 0;

/// Errors while creating the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket cannot be bound.
    #[error("Cannot listen on API socket {0}")]
    Bind(String, #[source] io::Error),
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The control socket.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    clients: HashMap<u64, Client>,
    next_token: u64,
}

impl ApiServer {
    /// Listens on `path`, replacing a stale socket file.
    pub fn new(path: &Path) -> Result<Self, ApiError> {
        let err = |e| ApiError::Bind(path.display().to_string(), e);
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let epoll = Epoll::new().map_err(err)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(err)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            epoll,
            clients: HashMap::new(),
            next_token: 1,
        })
    }

    /// The fd the event loop polls.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn drop_client(&mut self, token: u64) {
        if let Some(c) = self.clients.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// Handles pending connections and requests; `handle` answers each request.
    pub fn process(&mut self, handle: &mut dyn FnMut(ApiRequest) -> Value) {
        let mut events = [EpollEvent::default(); 16];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTENER {
                while let Ok((stream, _)) = self.listener.accept() {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let t = self.next_token;
                    self.next_token += 1;
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            stream.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, t),
                        )
                        .is_ok()
                    {
                        self.clients.insert(
                            t,
                            Client {
                                stream,
                                buf: Vec::new(),
                            },
                        );
                    }
                }
                continue;
            }
            self.serve_client(token, handle);
        }
    }

    fn serve_client(&mut self, token: u64, handle: &mut dyn FnMut(ApiRequest) -> Value) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if c.buf.len() > MAX_LINE {
                break;
            }
        }
        while let Some(pos) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let reply = match parse_request(&text) {
                Ok(req) => handle(req),
                Err(e) => json!({"ok": false, "error": e}),
            };
            let mut out = reply.to_string();
            out.push('\n');
            // Replies are small; a client that does not read them within a second loses them
            // rather than stalling the event loop.
            let _ = c.stream.set_nonblocking(false);
            let _ = c
                .stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = c.stream.write_all(out.as_bytes());
            let _ = c.stream.set_nonblocking(true);
        }
        if c.buf.len() > MAX_LINE {
            let _ = c
                .stream
                .write_all(b"{\"ok\":false,\"error\":\"Request line too long\"}\n");
            closed = true;
        }
        if closed {
            self.drop_client(token);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    #[test]
    fn serves_line_requests() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("api.sock");
        let mut server = ApiServer::new(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .write_all(b"{\"action\":\"pause\"}\n{\"action\":\"nope\"}\n")
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            server.process(&mut |r| {
                seen.push(r);
                json!({"ok": true})
            });
        }
        assert_eq!(seen, vec![ApiRequest::Pause {}]);
        let mut r = BufReader::new(client);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"ok\":true}\n");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":false"));
    }
}
