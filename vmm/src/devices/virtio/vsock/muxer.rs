//! The host side of the vsock device: hybrid vsock over Unix sockets.
//!
//! * Host to guest: a client connects to the device socket (`--vsock-uds PATH`), writes
//!   `CONNECT <port>\n`; the muxer sends the guest a REQUEST from a fresh host port, and on
//!   the guest's RESPONSE answers `OK <hostport>\n`. From then on the socket is a byte stream
//!   to the guest listener.
//! * Guest to host: a REQUEST to CID 2 port P connects to `PATH_P`; success gives a RESPONSE,
//!   failure a RST.
//!
//! Flow control follows the virtio-vsock credit scheme: the muxer never sends more than the
//! guest's advertised free buffer space, advertises [`CONN_BUF_SIZE`] itself, and resets a
//! connection whose guest overruns it. Every queue and buffer here is bounded.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::{op, shutdown, VsockHeader, TYPE_STREAM};
use super::queue::VsockBackend;
use super::HOST_CID;

/// Receive buffer advertised to the guest for each connection.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once this many bytes were consumed since the last one.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// Most concurrent connections.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most control packets waiting for RX buffers before guest TX is throttled.
const MAX_PENDING_CTRL: usize = 2048;
/// Longest `CONNECT <port>\n` line.
const MAX_HANDSHAKE_LEN: usize = 32;
/// First host port handed out for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = 0;

/// Errors while creating the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The device socket cannot be bound.
    #[error("Cannot listen on vsock socket {0}")]
    Bind(String, #[source] io::Error),
    /// epoll setup failed.
    #[error("Cannot set up vsock event polling")]
    Epoll(#[source] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host client connected; waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// The host closed; SHUTDOWN sent, waiting for the guest's RST.
    HostClosed,
}

#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    token: u64,
    state: ConnState,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    tx_buf: Vec<u8>,
    readable: bool,
    queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, token: u64, state: ConnState) -> Self {
        Connection {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: Vec::new(),
            readable: false,
            queued: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Writes buffered guest data to the host socket; returns bytes written, or an error
    /// if the socket is gone.
    fn flush(&mut self) -> io::Result<usize> {
        let mut done = 0;
        while done < self.tx_buf.len() {
            match self.stream.write(&self.tx_buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx_buf.drain(..done);
        // `done` is bounded by CONN_BUF_SIZE.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(u32::try_from(done).unwrap_or(0));
        Ok(done)
    }
}

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The hybrid-vsock muxer.
#[derive(Debug)]
pub struct VsockMuxer {
    uds_path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<u64, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    token_keys: HashMap<u64, ConnKey>,
    ready: VecDeque<ConnKey>,
    ctrl: VecDeque<VsockHeader>,
    next_token: u64,
    next_local_port: u32,
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is full
/// fails the connection (the guest gets RST) instead of stalling the monitor.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the duration of the call.
    let ret = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.trim_end().strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl VsockMuxer {
    /// Listens on `uds_path` (removing a stale socket file) for guest CID `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        let name = uds_path.display().to_string();
        // A socket file left by a previous run would make bind fail.
        let _ = std::fs::remove_file(uds_path);
        let listener =
            UnixListener::bind(uds_path).map_err(|e| MuxerError::Bind(name.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(name, e))?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(VsockMuxer {
            uds_path: uds_path.to_path_buf(),
            guest_cid,
            listener,
            epoll,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            token_keys: HashMap::new(),
            ready: VecDeque::new(),
            ctrl: VecDeque::new(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The epoll fd the device's event loop polls.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Open connections (for metrics and tests).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn header(&self, key: ConnKey, op: u16, flags: u32) -> VsockHeader {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&key)
            .map_or((CONN_BUF_SIZE, 0), |c| (CONN_BUF_SIZE, c.fwd_cnt));
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn push_ctrl(&mut self, key: ConnKey, op: u16, flags: u32) {
        let h = self.header(key, op, flags);
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        if self.ctrl.len() < MAX_PENDING_CTRL {
            self.ctrl.push_back(h);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            self.token_keys.remove(&c.token);
        }
    }

    fn reset(&mut self, key: ConnKey) {
        self.remove_conn(key);
        self.push_ctrl(key, op::RST, 0);
    }

    fn add_conn(&mut self, key: ConnKey, stream: UnixStream, state: ConnState) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let token = self.token();
        self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(
                EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED | EventSet::READ_HANG_UP,
                token,
            ),
        )?;
        self.token_keys.insert(token, key);
        self.conns
            .insert(key, Connection::new(stream, token, state));
        Ok(())
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == p) {
                return p;
            }
        }
    }

    fn mark_ready(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.readable && !c.queued && c.state != ConnState::HostClosed {
                c.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    /// Handles readiness of the listener and the sockets. Call when [`Self::epoll_fd`] is
    /// readable.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(_) => return,
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTENER_TOKEN {
                self.accept_all();
            } else if self.handshakes.contains_key(&token) {
                self.advance_handshake(token);
            } else if let Some(key) = self.token_keys.get(&token).copied() {
                self.conn_event(key, ev.event_set());
            }
        }
    }

    fn accept_all(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                continue;
            }
            let token = self.token();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                )
                .is_ok()
            {
                self.handshakes.insert(
                    token,
                    Handshake {
                        stream,
                        line: Vec::new(),
                    },
                );
                // The request line is often already there.
                self.advance_handshake(token);
            }
        }
    }

    fn drop_handshake(&mut self, token: u64) -> Option<Handshake> {
        let hs = self.handshakes.remove(&token)?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            hs.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        Some(hs)
    }

    fn advance_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        // One byte at a time, so no stream data after the newline is consumed here.
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => {
                    self.drop_handshake(token);
                    return;
                }
                Ok(_) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(_) if hs.line.len() >= MAX_HANDSHAKE_LEN => break None,
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(hs) = self.drop_handshake(token) else {
            return;
        };
        let Some(peer_port) = port else {
            return; // malformed request: dropping the stream closes it
        };
        let key = ConnKey {
            local_port: self.alloc_local_port(),
            peer_port,
        };
        if self.add_conn(key, hs.stream, ConnState::LocalInit).is_ok() {
            self.push_ctrl(key, op::REQUEST, 0);
        }
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) && !c.tx_buf.is_empty() {
            if c.flush().is_err() {
                self.reset(key);
                return;
            }
            self.maybe_credit_update(key);
        }
        if events
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            if let Some(c) = self.conns.get_mut(&key) {
                c.readable = true;
            }
            self.mark_ready(key);
        }
    }

    fn maybe_credit_update(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get(&key) {
            if c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
                self.push_ctrl(key, op::CREDIT_UPDATE, 0);
            }
        }
    }

    fn guest_request(&mut self, key: ConnKey) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.push_ctrl(key, op::RST, 0);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), key.local_port));
        let added = connect_nonblocking(&path)
            .and_then(|stream| self.add_conn(key, stream, ConnState::Established));
        match added {
            Ok(()) => self.push_ctrl(key, op::RESPONSE, 0),
            Err(_) => self.push_ctrl(key, op::RST, 0),
        }
    }

    fn guest_rw(&mut self, key: ConnKey, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state != ConnState::Established {
            return;
        }
        if c.tx_buf.len() + payload.len() > CONN_BUF_SIZE as usize {
            // The guest ignored our credit.
            self.reset(key);
            return;
        }
        c.tx_buf.extend_from_slice(payload);
        if c.flush().is_err() {
            self.reset(key);
            return;
        }
        self.maybe_credit_update(key);
    }
}

impl VsockBackend for VsockMuxer {
    fn send_pkt(&mut self, hdr: &VsockHeader, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.push_ctrl(key, op::RST, 0);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = hdr.buf_alloc;
            c.peer_fwd_cnt = hdr.fwd_cnt;
        }
        // Any packet may carry new credit: a connection waiting for it can send again.
        self.mark_ready(key);
        match hdr.op {
            op::REQUEST => self.guest_request(key),
            op::RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == ConnState::LocalInit => {
                    c.state = ConnState::Established;
                    let reply = format!("OK {}\n", key.local_port);
                    // A fresh socket buffer always has room for this short line.
                    if c.stream.write_all(reply.as_bytes()).is_err() {
                        self.reset(key);
                    } else {
                        self.mark_ready(key);
                    }
                }
                _ => self.push_ctrl(key, op::RST, 0),
            },
            op::RW => {
                if self.conns.contains_key(&key) {
                    self.guest_rw(key, payload);
                } else {
                    self.push_ctrl(key, op::RST, 0);
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.push_ctrl(key, op::CREDIT_UPDATE, 0);
                }
            }
            op::SHUTDOWN => {
                // Half-close does not carry through hybrid vsock: any shutdown closes.
                if let Some(c) = self.conns.get_mut(&key) {
                    let _ = c.flush();
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    self.reset(key);
                }
            }
            op::RST => self.remove_conn(key),
            _ => {
                if self.conns.contains_key(&key) {
                    self.reset(key);
                }
            }
        }
    }

    fn recv_pkt(&mut self, buf: &mut [u8], max_payload: usize) -> Option<VsockHeader> {
        if let Some(h) = self.ctrl.pop_front() {
            return Some(h);
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            if c.state != ConnState::Established || !c.readable {
                continue;
            }
            let room = (c.peer_credit() as usize).min(max_payload).min(buf.len());
            if room == 0 {
                // Wait for the guest's credit update.
                continue;
            }
            match c.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    c.state = ConnState::HostClosed;
                    c.readable = false;
                    let mut h = self.header(key, op::SHUTDOWN, shutdown::RCV | shutdown::SEND);
                    h.len = 0;
                    return Some(h);
                }
                Ok(n) => {
                    // n <= room <= u32 credit.
                    let n32 = u32::try_from(n).unwrap_or(0);
                    c.rx_cnt = c.rx_cnt.wrapping_add(n32);
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                    c.queued = true;
                    self.ready.push_back(key);
                    let mut h = self.header(key, op::RW, 0);
                    h.len = n32;
                    return Some(h);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    c.queued = true;
                    self.ready.push_back(key);
                }
                Err(_) => {
                    self.reset(key);
                    return self.ctrl.pop_front();
                }
            }
        }
        None
    }

    fn has_pending_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.ready.is_empty()
    }

    fn tx_blocked(&self) -> bool {
        self.ctrl.len() >= MAX_PENDING_CTRL
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use std::io::BufRead;

    const GUEST: u64 = 3;

    fn guest_pkt(src_port: u32, dst_port: u32, op: u16) -> VsockHeader {
        VsockHeader {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    fn pump(m: &mut VsockMuxer) -> Vec<(VsockHeader, Vec<u8>)> {
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.process_events();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while m.has_pending_rx() {
            match m.recv_pkt(&mut buf, 4096) {
                Some(h) => out.push((h, buf[..h.len as usize].to_vec())),
                None => break,
            }
        }
        out
    }

    #[test]
    fn host_connect_handshake_and_data_both_ways() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("vsock.sock");
        let mut m = VsockMuxer::new(&uds, GUEST).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let pkts = pump(&mut m);
        assert_eq!(pkts.len(), 1);
        let req = pkts[0].0;
        assert_eq!(req.op, op::REQUEST);
        assert_eq!(req.dst_port, 1024);
        assert_eq!(req.dst_cid, GUEST);
        let host_port = req.src_port;

        m.send_pkt(&guest_pkt(1024, host_port, op::RESPONSE), &[]);
        let mut reader = io::BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {host_port}\n"));

        // Host -> guest.
        client.write_all(b"hello guest").unwrap();
        let pkts = pump(&mut m);
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RW);
        assert_eq!(pkts[0].1, b"hello guest");

        // Guest -> host.
        let mut rw = guest_pkt(1024, host_port, op::RW);
        rw.len = 5;
        m.send_pkt(&rw, b"howdy");
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"howdy");

        // Host closes: guest gets SHUTDOWN, then its RST removes the connection.
        drop(reader);
        drop(client);
        let pkts = pump(&mut m);
        assert!(pkts.iter().any(|p| p.0.op == op::SHUTDOWN));
        m.send_pkt(&guest_pkt(1024, host_port, op::RST), &[]);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn credit_limits_host_to_guest_data() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let mut m = VsockMuxer::new(&uds, GUEST).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 7\n").unwrap();
        let port = pump(&mut m)[0].0.src_port;
        let mut resp = guest_pkt(7, port, op::RESPONSE);
        resp.buf_alloc = 10;
        m.send_pkt(&resp, &[]);
        client.write_all(&[1u8; 100]).unwrap();
        let pkts = pump(&mut m);
        let total: usize = pkts.iter().map(|p| p.1.len()).sum();
        assert_eq!(total, 10);
        // The guest consumed 10 bytes and grants more.
        let mut upd = guest_pkt(7, port, op::CREDIT_UPDATE);
        upd.buf_alloc = 10;
        upd.fwd_cnt = 10;
        m.send_pkt(&upd, &[]);
        let pkts: Vec<_> = {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 4096];
            while let Some(h) = m.recv_pkt(&mut buf, 4096) {
                out.push(h);
            }
            out
        };
        assert_eq!(pkts.iter().map(|h| h.len).sum::<u32>(), 10);
    }

    #[test]
    fn credit_carried_by_an_rw_header_resumes_host_data() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let mut m = VsockMuxer::new(&uds, GUEST).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 9\n").unwrap();
        let port = pump(&mut m)[0].0.src_port;
        let mut resp = guest_pkt(9, port, op::RESPONSE);
        resp.buf_alloc = 4;
        m.send_pkt(&resp, &[]);
        client.write_all(b"abcdefgh").unwrap();
        let first: usize = pump(&mut m).iter().map(|p| p.1.len()).sum();
        assert_eq!(first, 4);
        // No new host data and no CREDIT_UPDATE: the credit comes in an RW header.
        let mut rw = guest_pkt(9, port, op::RW);
        rw.buf_alloc = 4;
        rw.fwd_cnt = 4;
        rw.len = 1;
        m.send_pkt(&rw, b"x");
        let mut buf = vec![0u8; 64];
        let mut got = 0;
        while let Some(h) = m.recv_pkt(&mut buf, 64) {
            got += h.len;
        }
        assert_eq!(got, 4);
    }

    #[test]
    fn guest_connect_to_host_listener() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let mut m = VsockMuxer::new(&uds, GUEST).unwrap();
        let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
        m.send_pkt(&guest_pkt(40000, 5000, op::REQUEST), &[]);
        let pkts = pump(&mut m);
        assert_eq!(pkts[0].0.op, op::RESPONSE);
        let (mut s, _) = listener.accept().unwrap();
        let mut rw = guest_pkt(40000, 5000, op::RW);
        rw.len = 3;
        m.send_pkt(&rw, b"abc");
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        // No listener on port 5001: RST.
        m.send_pkt(&guest_pkt(40001, 5001, op::REQUEST), &[]);
        let pkts = pump(&mut m);
        assert_eq!(pkts.last().unwrap().0.op, op::RST);
    }

    #[test]
    fn full_host_listener_backlog_gives_rst_without_blocking() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let mut m = VsockMuxer::new(&uds, GUEST).unwrap();
        let path = PathBuf::from(format!("{}_6000", uds.display()));
        let _listener = UnixListener::bind(&path).unwrap();
        // Fill the backlog: nobody accepts.
        let mut held = Vec::new();
        while let Ok(s) = connect_nonblocking(&path) {
            held.push(s);
            assert!(held.len() < 100_000);
        }
        let start = std::time::Instant::now();
        m.send_pkt(&guest_pkt(40000, 6000, op::REQUEST), &[]);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let pkts = pump(&mut m);
        assert_eq!(pkts.last().unwrap().0.op, op::RST);
    }

    #[test]
    fn bad_handshakes_and_foreign_packets() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let mut m = VsockMuxer::new(&uds, GUEST).unwrap();
        let mut c = UnixStream::connect(&uds).unwrap();
        c.write_all(b"HELLO\n").unwrap();
        let mut long = UnixStream::connect(&uds).unwrap();
        long.write_all(&[b'A'; 100]).unwrap();
        assert!(pump(&mut m).is_empty());
        assert_eq!(m.connection_count(), 0);
        // Wrong source CID is ignored; RW on unknown connection gets RST.
        let mut p = guest_pkt(1, 2, op::REQUEST);
        p.src_cid = 9;
        m.send_pkt(&p, &[]);
        assert!(!m.has_pending_rx());
        m.send_pkt(&guest_pkt(1, 2, op::RW), &[]);
        let pkts = pump(&mut m);
        assert_eq!(pkts[0].0.op, op::RST);
        assert_eq!(parse_connect(b"CONNECT 99"), Some(99));
        assert_eq!(parse_connect(b"CONNECT x"), None);
    }
}
