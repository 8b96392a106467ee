//! The hybrid unix-socket backend: routes guest packets to per-connection
//! host streams, accepts host clients on the UDS, and keeps the epoll
//! registration of every stream in line with what it can act on.
//!
//! The muxer never touches guest memory: the device hands it owned
//! headers and payload copies, and gets headers plus bytes back.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use husk_virtio::{warn_limited, RateLimitedLog};

use crate::connection::{ConnError, Connection, CONN_BUF_ALLOC};
use crate::handshake::PendingHandshake;
use crate::packet::{op, Header, TYPE_STREAM, VMADDR_CID_HOST};

/// Most live connections at once; beyond it new ones are refused.
pub const MAX_CONNECTIONS: usize = 512;
/// Most host clients that may be half-way through their CONNECT line.
pub const MAX_HANDSHAKES: usize = 64;
/// Most RSTs waiting for guest RX buffers; a guest that floods us with bad
/// packets and never refills RX loses the excess, not our memory.
const MAX_QUEUED_RSTS: usize = 1024;
/// Host-initiated connections get local ports from here up, out of the way
/// of the ports guest services usually listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Accepts per listener wake-up, so a connect storm cannot starve the queues.
const MAX_ACCEPTS_PER_EVENT: usize = 32;

/// Epoll data token of every host stream (the fd identifies which).
pub const TOKEN_STREAM: u32 = 16;

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock socket path {0} is taken")]
    PathTaken(PathBuf),
    #[error("cannot bind vsock socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// A connection's identity: our port and the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy)]
enum Owner {
    Handshake,
    Conn(ConnKey),
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    handshakes: HashMap<RawFd, PendingHandshake>,
    by_fd: HashMap<RawFd, Owner>,
    /// Connections that may have a packet for the guest.
    rxq: VecDeque<ConnKey>,
    /// RSTs for connections that no longer (or never) existed.
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
    /// The guest RX queue ran dry: stop reading host streams until it
    /// refills, or level-triggered epoll would spin.
    rx_starved: bool,
    /// What each fd is registered for in epoll right now.
    registered: HashMap<RawFd, EventSet>,
    /// Streams to take out of epoll before closing them, so a reused fd
    /// number never meets a stale registration.
    doomed: Vec<UnixStream>,
    log: RateLimitedLog,
    /// Limits debug lines a guest can trigger at will (connect/close churn).
    debug_log: RateLimitedLog,
}

impl Muxer {
    /// Binds the UDS at `uds_path`; an existing file there is an error,
    /// never removed (another VMM may own it).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, MuxerError> {
        let listener = UnixListener::bind(&uds_path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                MuxerError::PathTaken(uds_path.clone())
            } else {
                MuxerError::Bind {
                    path: uds_path.clone(),
                    source,
                }
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| MuxerError::Bind {
                path: uds_path.clone(),
                source,
            })?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            by_fd: HashMap::new(),
            rxq: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_starved: false,
            registered: HashMap::new(),
            doomed: Vec::new(),
            log: RateLimitedLog::default(),
            debug_log: RateLimitedLog::default(),
        })
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections (handshakes excluded).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Guest bytes held for slow host readers, over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    pub fn set_rx_starved(&mut self, starved: bool) {
        self.rx_starved = starved;
    }

    /// Accepts waiting host clients; they must then send their CONNECT line.
    pub fn accept_host(&mut self, now: Instant) {
        for _ in 0..MAX_ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn_limited!(self.log, error = %e, "vsock: accept on the UDS failed");
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                warn_limited!(
                    self.log,
                    "vsock: refusing host client (too many connections)"
                );
                continue;
            }
            let fd = stream.as_raw_fd();
            self.by_fd.insert(fd, Owner::Handshake);
            self.handshakes
                .insert(fd, PendingHandshake::new(stream, now));
        }
    }

    /// Handles readiness of a host stream (handshake or connection).
    pub fn handle_stream_event(&mut self, fd: RawFd, set: EventSet, now: Instant) {
        match self.by_fd.get(&fd).copied() {
            Some(Owner::Handshake) => self.advance_handshake(fd, now),
            Some(Owner::Conn(key)) => self.conn_event(key, set),
            None => tracing::debug!(fd, "vsock: event for a stream we no longer own"),
        }
    }

    fn advance_handshake(&mut self, fd: RawFd, now: Instant) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        match hs.advance() {
            Ok(None) => {}
            Ok(Some(port)) => {
                let Some(hs) = self.handshakes.remove(&fd) else {
                    return;
                };
                if self.conns.len() >= MAX_CONNECTIONS {
                    warn_limited!(self.log, "vsock: too many connections, closing host client");
                    self.by_fd.remove(&fd);
                    self.doomed.push(hs.stream);
                    return;
                }
                let local_port = self.alloc_local_port();
                let key = ConnKey {
                    local_port,
                    peer_port: port,
                };
                tracing::debug!(local_port, port, "vsock: host connects to guest");
                self.by_fd.insert(fd, Owner::Conn(key));
                self.conns
                    .insert(key, Connection::new_local(hs.stream, local_port, port, now));
                self.schedule(key);
            }
            Err(error) => {
                warn_limited!(self.log, %error, "vsock: bad CONNECT from host client");
                self.drop_handshake(fd);
            }
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        self.by_fd.remove(&fd);
        if let Some(hs) = self.handshakes.remove(&fd) {
            self.doomed.push(hs.stream);
        }
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            let error = conn
                .stream
                .take_error()
                .ok()
                .flatten()
                .unwrap_or_else(|| io::Error::other("EPOLLERR"));
            self.kill(key, ConnError::HostIo(error));
            return;
        }
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            conn.notify_readable();
        }
        if set.contains(EventSet::OUT) {
            if let Err(e) = conn.flush_tx() {
                self.kill(key, e);
                return;
            }
        }
        self.schedule(key);
    }

    /// Picks an unused local port for a host-initiated connection.
    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most MAX_CONNECTIONS ports are taken, so this ends.
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }

    /// Routes one packet the guest put on its TX queue. `data` holds the
    /// payload (`hdr.len` bytes, already bounded by the device).
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8], now: Instant) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != VMADDR_CID_HOST {
            warn_limited!(
                self.log,
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "vsock: dropping guest packet with bad addresses"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            warn_limited!(
                self.log,
                type_ = hdr.type_,
                "vsock: unsupported socket type"
            );
            self.reply_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(key, hdr),
                op::RST => {}
                _ => {
                    if self.debug_log.allow().is_some() {
                        tracing::debug!(op = hdr.op, ?key, "vsock: packet for unknown connection");
                    }
                    self.reply_rst(hdr);
                }
            }
            return;
        };
        match conn.on_guest_pkt(hdr, data, now) {
            Ok(()) => self.schedule(key),
            Err(e) => self.kill(key, e),
        }
    }

    /// Guest connects to host port P: connect to `<uds_path>_<P>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            warn_limited!(
                self.log,
                "vsock: too many connections, refusing guest request"
            );
            self.reply_rst(hdr);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                if self.debug_log.allow().is_some() {
                    tracing::debug!(?key, "vsock: guest connected to host service");
                }
                self.by_fd.insert(stream.as_raw_fd(), Owner::Conn(key));
                self.conns.insert(key, Connection::new_peer(stream, hdr));
                self.schedule(key);
            }
            Err(error) => {
                if self.debug_log.allow().is_some() {
                    tracing::debug!(?path, %error, "vsock: guest connect refused");
                }
                self.reply_rst(hdr);
            }
        }
    }

    /// Drops a connection; tells the guest with an RST if `why` asks.
    fn kill(&mut self, key: ConnKey, why: ConnError) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if why.guest_fault() {
            warn_limited!(self.log, ?key, error = %why, "vsock: resetting connection");
        } else if self.debug_log.allow().is_some() {
            tracing::debug!(?key, error = %why, "vsock: connection ends");
        }
        if why.needs_rst() {
            self.queue_rst(key);
        }
        self.by_fd.remove(&conn.stream.as_raw_fd());
        self.doomed.push(conn.stream);
    }

    fn reply_rst(&mut self, to: &Header) {
        if to.op == op::RST {
            return;
        }
        self.queue_rst(ConnKey {
            local_port: to.dst_port,
            peer_port: to.src_port,
        });
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rst_queue.len() >= MAX_QUEUED_RSTS {
            warn_limited!(self.log, "vsock: RST queue full, dropping RST");
            return;
        }
        self.rst_queue.push_back(Header {
            src_port: key.local_port,
            dst_port: key.peer_port,
            op: op::RST,
            ..Header::default()
        });
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if conn.has_pending_rx() && !conn.in_rxq {
                conn.in_rxq = true;
                self.rxq.push_back(key);
            }
        }
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    /// The next packet for the guest, payload (if any) in `buf[..len]`.
    /// `None` if nothing is ready after all.
    pub fn recv_pkt(&mut self, buf: &mut [u8], now: Instant) -> Option<Header> {
        let mut hdr = if let Some(rst) = self.rst_queue.pop_front() {
            rst
        } else {
            loop {
                let key = *self.rxq.front()?;
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.rxq.pop_front();
                    continue;
                };
                match conn.next_rx(buf, now) {
                    Ok(Some(hdr)) => {
                        // Round-robin, so one busy stream cannot starve the rest.
                        self.rxq.pop_front();
                        if conn.has_pending_rx() {
                            self.rxq.push_back(key);
                        } else {
                            conn.in_rxq = false;
                        }
                        break hdr;
                    }
                    Ok(None) => {
                        conn.in_rxq = false;
                        self.rxq.pop_front();
                    }
                    Err(e) => {
                        self.rxq.pop_front();
                        self.kill(key, e);
                    }
                }
            }
        };
        hdr.src_cid = VMADDR_CID_HOST;
        hdr.dst_cid = self.guest_cid;
        hdr.type_ = TYPE_STREAM;
        if hdr.op == op::RST {
            hdr.buf_alloc = CONN_BUF_ALLOC;
        }
        Some(hdr)
    }

    /// Expires handshakes and connections whose timer ran out.
    pub fn process_deadlines(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| now >= hs.deadline)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            warn_limited!(self.log, "vsock: host client sent no CONNECT line in time");
            self.drop_handshake(fd);
        }
        let expired: Vec<(ConnKey, ConnError)> = self
            .conns
            .iter()
            .filter_map(|(&key, conn)| conn.check_deadline(now).err().map(|e| (key, e)))
            .collect();
        for (key, e) in expired {
            self.kill(key, e);
        }
    }

    /// The earliest timer among handshakes and connections.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hs = self.handshakes.values().map(|hs| hs.deadline);
        let conns = self.conns.values().filter_map(|c| c.deadline);
        hs.chain(conns).min()
    }

    /// Brings epoll in line with what every stream needs, then closes the
    /// streams that were dropped.
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        for stream in self.doomed.drain(..) {
            let fd = stream.as_raw_fd();
            if let Some(set) = self.registered.remove(&fd) {
                if let Err(error) = ops.remove(Events::with_data(&stream, TOKEN_STREAM, set)) {
                    tracing::warn!(fd, ?error, "vsock: cannot unregister stream");
                }
            }
        }
        let wanted: Vec<(RawFd, EventSet)> = self
            .handshakes
            .keys()
            .map(|&fd| (fd, EventSet::IN))
            .chain(
                self.conns
                    .values()
                    .map(|c| (c.stream.as_raw_fd(), c.interest(self.rx_starved))),
            )
            .collect();
        for (fd, set) in wanted {
            let current = self.registered.get(&fd).copied();
            let events = Events::with_data_raw(fd, TOKEN_STREAM, set);
            let result = match (current, set.is_empty()) {
                (None, true) => continue,
                (Some(cur), false) if cur == set => continue,
                (None, false) => ops.add(events),
                (Some(_), false) => ops.modify(events),
                (Some(cur), true) => ops.remove(Events::with_data_raw(fd, TOKEN_STREAM, cur)),
            };
            match result {
                Ok(()) if set.is_empty() => {
                    self.registered.remove(&fd);
                }
                Ok(()) => {
                    self.registered.insert(fd, set);
                }
                Err(error) => tracing::warn!(fd, ?error, "vsock: epoll update failed"),
            }
        }
    }

    /// Drops every connection and handshake (device reset). The streams
    /// close at the next `sync_epoll`.
    pub fn reset(&mut self) {
        for (_, conn) in self.conns.drain() {
            self.doomed.push(conn.stream);
        }
        for (_, hs) in self.handshakes.drain() {
            self.doomed.push(hs.stream);
        }
        self.by_fd.clear();
        self.rxq.clear();
        self.rst_queue.clear();
        self.rx_starved = false;
    }

    /// Closes streams without epoll bookkeeping; for when the event loop is
    /// gone (the device is being dropped).
    pub fn close_doomed_unregistered(&mut self) {
        for stream in self.doomed.drain(..) {
            self.registered.remove(&stream.as_raw_fd());
        }
    }

    /// Best effort: pushes held guest bytes to their host streams until all
    /// are written or `deadline` passes.
    pub fn flush_all(&mut self, deadline: Instant) {
        loop {
            let mut left = false;
            for conn in self.conns.values_mut() {
                if conn.buffered() > 0 && conn.flush_tx().is_ok() && conn.buffered() > 0 {
                    left = true;
                }
            }
            if !left || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// `connect(2)` on a non-blocking unix socket: a host service that is not
/// there, or whose backlog is full, fails at once instead of stalling the
/// event thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
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
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and the length matches its type.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        // EAGAIN (backlog full) and EINPROGRESS count as refused: we do not
        // keep half-open connects around.
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
