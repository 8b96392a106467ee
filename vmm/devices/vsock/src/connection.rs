//! One vsock stream between a guest port and a host unix stream: its state
//! machine and its credit accounting (virtio spec 5.10.6.3).
//!
//! Two independent credit windows exist:
//! - guest → host: we advertise `CONN_BUF_ALLOC` and count what the host
//!   has actually taken (`fwd_cnt`). Bytes the host socket cannot take now
//!   wait in `tx_buf`, which can therefore never exceed what we advertised;
//!   a guest that sends beyond it is reset.
//! - host → guest: the guest advertises `buf_alloc`/`fwd_cnt` on every
//!   packet; we never read more from the host stream than that allows, so
//!   nothing is ever buffered on this path (bytes go straight from the
//!   socket into the guest's RX buffer).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use crate::packet::{op, shutdown, Header};

/// Receive buffer we advertise to the guest per connection, and the bound
/// on bytes we keep for a slow host reader.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed space once this much has been forwarded
/// since our last advertisement, so it never waits on a stale window.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// Buffer capacity an idle connection may keep.
const IDLE_BUF_CAPACITY: usize = 16 * 1024;
/// How long the guest has to answer a host-initiated OP_REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we wait for the guest's RST after we shut a connection down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why a connection has to go. All of them end with the connection dropped;
/// [`ConnError::needs_rst`] says whether the guest must be told.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest reset the connection")]
    PeerReset,
    #[error("connection closed")]
    Closed,
    #[error("timed out in state {0:?}")]
    Timeout(State),
    #[error("guest sent {len} bytes with only {free} bytes of credit")]
    CreditExceeded { len: usize, free: u32 },
    #[error("guest sent op {op} in state {state:?}")]
    UnexpectedOp { op: u16, state: State },
    #[error("host stream: {0}")]
    HostIo(io::Error),
}

impl ConnError {
    /// Whether the guest is to receive an OP_RST for this.
    pub fn needs_rst(&self) -> bool {
        !matches!(self, Self::PeerReset)
    }

    /// Whether the guest caused it (logged rate-limited as a warning).
    pub fn guest_fault(&self) -> bool {
        matches!(
            self,
            Self::CreditExceeded { .. } | Self::UnexpectedOp { .. }
        )
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: OP_REQUEST queued or sent, waiting for OP_RESPONSE.
    LocalInit,
    /// Bytes flow both ways.
    Established,
    /// The host side closed; we sent OP_SHUTDOWN and wait for the guest's
    /// RST (or the grace timeout) while still flushing what we hold.
    Closing,
}

/// Control packets waiting for a guest RX buffer (bit set).
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    /// The host stream is (probably) readable.
    pub const RW: u8 = 8;
    pub const SHUTDOWN: u8 = 16;
}

#[derive(Debug)]
pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    state: State,
    /// When the current state times out (LocalInit, Closing).
    pub deadline: Option<Instant>,
    /// Set while the muxer has this connection in its RX queue.
    pub in_rxq: bool,
    pending: u8,
    // guest → host
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    tx_buf: VecDeque<u8>,
    /// Leading bytes of `tx_buf` that are ours (the `OK` line), not the
    /// guest's, so they do not count as forwarded guest data.
    tx_prefix: usize,
    // host → guest
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// OP_SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    host_eof: bool,
}

impl Connection {
    /// A host-initiated connection; the guest hears OP_REQUEST first.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32, now: Instant) -> Self {
        let mut conn = Self::new(stream, local_port, peer_port, State::LocalInit);
        conn.pending = pending::REQUEST;
        conn.deadline = Some(now + REQUEST_TIMEOUT);
        conn
    }

    /// A guest-initiated connection whose host side already connected.
    pub fn new_peer(stream: UnixStream, request: &Header) -> Self {
        let mut conn = Self::new(
            stream,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        conn.pending = pending::RESPONSE;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        conn
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            deadline: None,
            in_rxq: false,
            pending: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: VecDeque::new(),
            tx_prefix: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            peer_shutdown: 0,
            host_eof: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Guest bytes we hold because the host has not taken them yet.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() - self.tx_prefix
    }

    /// Whether a packet for the guest may be waiting.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// How many bytes the guest can take right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The epoll interest this connection needs now. Empty means "take the
    /// fd out of epoll": a closed peer raises EPOLLHUP whatever the interest,
    /// which would spin a level-triggered loop we cannot act on.
    pub fn interest(&self, rx_starved: bool) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & shutdown::RCV == 0
            && self.pending & pending::RW == 0
            && !rx_starved
            && self.peer_credit() > 0
        {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// The host stream signalled readable (or hung up, which a read reports).
    pub fn notify_readable(&mut self) {
        if self.state == State::Established && !self.host_eof {
            self.pending |= pending::RW;
        }
    }

    /// Applies one packet the guest sent on this connection.
    pub fn on_guest_pkt(
        &mut self,
        hdr: &Header,
        data: &[u8],
        now: Instant,
    ) -> Result<(), ConnError> {
        if hdr.op == op::RST {
            return Err(ConnError::PeerReset);
        }
        // Every packet carries the guest's current receive window.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        let unexpected = || ConnError::UnexpectedOp {
            op: hdr.op,
            state: self.state,
        };
        match (self.state, hdr.op) {
            (State::LocalInit, op::RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                self.tx_prefix = line.len();
                self.tx_buf.extend(line.as_bytes());
                self.flush_tx()
            }
            (State::LocalInit, _) => Err(unexpected()),
            (_, op::RW) => {
                if self.peer_shutdown & shutdown::SEND != 0 {
                    return Err(unexpected());
                }
                self.accept_data(data)
            }
            (_, op::CREDIT_UPDATE) => Ok(()),
            (_, op::CREDIT_REQUEST) => {
                self.pending |= pending::CREDIT_UPDATE;
                Ok(())
            }
            (_, op::SHUTDOWN) => {
                self.peer_shutdown |= hdr.flags & shutdown::BOTH;
                if self.peer_shutdown == shutdown::BOTH && self.state != State::Closing {
                    // Give the host the bytes we still hold, then RST.
                    self.state = State::Closing;
                    self.deadline = Some(now + SHUTDOWN_GRACE);
                }
                self.after_flush()
            }
            _ => Err(unexpected()),
        }
    }

    fn accept_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let held = self.rx_cnt.wrapping_sub(self.fwd_cnt);
        let free = CONN_BUF_ALLOC.saturating_sub(held);
        if data.len() > free as usize {
            return Err(ConnError::CreditExceeded {
                len: data.len(),
                free,
            });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = match write_some(&mut self.stream, data) {
                Ok(n) => n,
                Err(e) => return Err(ConnError::HostIo(e)),
            };
            self.forwarded(written);
        }
        self.tx_buf.extend(&data[written..]);
        Ok(())
    }

    /// Writes buffered bytes to the host until it would block.
    pub fn flush_tx(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front).map_err(ConnError::HostIo)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            let ours = n.min(self.tx_prefix);
            self.tx_prefix -= ours;
            self.forwarded(n - ours);
        }
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > IDLE_BUF_CAPACITY {
            // An idle connection should not keep a burst's worth of memory.
            self.tx_buf.shrink_to(IDLE_BUF_CAPACITY);
        }
        self.after_flush()
    }

    /// Finishes a guest shutdown once nothing is left to forward.
    fn after_flush(&mut self) -> Result<(), ConnError> {
        if !self.tx_buf.is_empty() {
            return Ok(());
        }
        if self.peer_shutdown == shutdown::BOTH {
            return Err(ConnError::Closed);
        }
        if self.peer_shutdown & shutdown::SEND != 0 {
            // Best effort: the host sees EOF; failure means it is gone anyway.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// Checks this connection's timer.
    pub fn check_deadline(&self, now: Instant) -> Result<(), ConnError> {
        match self.deadline {
            Some(d) if now >= d => Err(ConnError::Timeout(self.state)),
            _ => Ok(()),
        }
    }

    /// Produces the next packet for the guest, reading host data into `buf`
    /// (whose length is what the guest's RX buffer holds). The returned
    /// header has ports, op, flags, len and credit set; the muxer adds cids.
    /// `Ok(None)`: nothing to send after all.
    pub fn next_rx(&mut self, buf: &mut [u8], now: Instant) -> Result<Option<Header>, ConnError> {
        let mut hdr = Header {
            src_port: self.local_port,
            dst_port: self.peer_port,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        };
        if self.take(pending::REQUEST) {
            hdr.op = op::REQUEST;
        } else if self.take(pending::RESPONSE) {
            hdr.op = op::RESPONSE;
        } else if self.take(pending::CREDIT_UPDATE) {
            hdr.op = op::CREDIT_UPDATE;
        } else if self.pending & pending::RW != 0 {
            let max = buf.len().min(self.peer_credit() as usize);
            if max == 0
                || self.state != State::Established
                || self.peer_shutdown & shutdown::RCV != 0
            {
                self.pending &= !pending::RW;
                return self.next_rx(buf, now);
            }
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    // Host closed: tell the guest, give it time to RST.
                    self.pending &= !pending::RW;
                    self.host_eof = true;
                    self.state = State::Closing;
                    self.deadline = Some(now + SHUTDOWN_GRACE);
                    self.pending |= pending::SHUTDOWN;
                    return self.next_rx(buf, now);
                }
                Ok(n) => {
                    hdr.op = op::RW;
                    hdr.len = n as u32;
                    self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                }
                Err(e) if is_transient(&e) => {
                    self.pending &= !pending::RW;
                    return self.next_rx(buf, now);
                }
                Err(e) => return Err(ConnError::HostIo(e)),
            }
        } else if self.take(pending::SHUTDOWN) {
            hdr.op = op::SHUTDOWN;
            hdr.flags = shutdown::BOTH;
        } else {
            return Ok(None);
        }
        self.last_fwd_cnt_sent = self.fwd_cnt;
        // Any packet carries our fwd_cnt, so a separate update is moot.
        self.pending &= !pending::CREDIT_UPDATE;
        Ok(Some(hdr))
    }

    fn take(&mut self, bit: u8) -> bool {
        let set = self.pending & bit != 0;
        self.pending &= !bit;
        set
    }
}

/// Writes what the stream takes now; `Ok(0)` if it would block. Uses
/// `MSG_NOSIGNAL` so a vanished host reader is an `EPIPE`, never a SIGPIPE
/// that would kill the VMM whatever its signal disposition.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: `data` is a valid readable buffer of `data.len()` bytes and
        // the fd belongs to `stream`, which outlives the call.
        let ret = unsafe {
            libc::send(
                stream.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        let result = if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        };
        match result {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
