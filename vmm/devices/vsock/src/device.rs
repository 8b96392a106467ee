//! The virtio side: config space, queues, and the event-loop glue that
//! moves packets between guest rings and the [`Muxer`].
//!
//! Queue 0 (RX) carries packets to the guest, queue 1 (TX) from it. Queue 2
//! (event) is only used for VIRTIO_VSOCK_EVENT_TRANSPORT_RESET after live
//! migration, which husk does not do: we own it and ignore its kicks, and
//! the driver's buffers simply stay there.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use husk_virtio::{
    device_type, warn_limited, ActivateError, GuestMemory, Interrupt, RateLimitedLog, VirtioDevice,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::muxer::{Muxer, MuxerError, TOKEN_STREAM};
use crate::packet::{Header, HDR_SIZE, MAX_PKT_DATA};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Epoll data tokens of the device's own fds.
mod token {
    pub const RX: u32 = 0;
    pub const TX: u32 = 1;
    pub const EVENT: u32 = 2;
    pub const LISTENER: u32 = 3;
    pub const TIMER: u32 = 4;
    pub const KICK: u32 = 5;
}

/// Why the device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backend(#[from] MuxerError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(io::Error),
    #[error("cannot create the vsock timer: {0}")]
    Timer(io::Error),
}

struct Active {
    mem: GuestMemory,
    interrupt: Interrupt,
    queues: Vec<Queue>,
}

/// A virtio-vsock device backed by Firecracker-style hybrid unix sockets.
pub struct Vsock {
    guest_cid: u64,
    queue_events: Vec<EventFd>,
    /// Wakes the event thread when the vCPU thread changed something it
    /// must act on (activation, reset).
    kick: EventFd,
    /// Fires at the muxer's next deadline (handshakes, requests, shutdowns).
    timer: TimerFd,
    /// The deadline `timer` is armed for, to skip needless re-arming.
    timer_armed_for: Option<Instant>,
    muxer: Muxer,
    acked_features: u64,
    active: Option<Active>,
    /// One packet's payload, allocated once.
    scratch: Vec<u8>,
    log: RateLimitedLog,
}

impl Vsock {
    /// Creates the device for `guest_cid` and binds the host-side UDS at
    /// `uds_path`. Fails, naming the path, if something already exists there.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, Error> {
        let queue_events = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::EventFd)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let timer = nonblocking_timer().map_err(Error::Timer)?;
        let muxer = Muxer::new(guest_cid, uds_path)?;
        Ok(Self {
            guest_cid,
            queue_events,
            kick,
            timer,
            timer_armed_for: None,
            muxer,
            acked_features: 0,
            active: None,
            scratch: vec![0; MAX_PKT_DATA as usize],
            log: RateLimitedLog::default(),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Live connections (for diagnostics and tests).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Guest bytes held for slow host readers (bounded by 256 KiB per
    /// connection).
    pub fn buffered_bytes(&self) -> usize {
        self.muxer.buffered_bytes()
    }

    /// Best effort before the VMM exits: takes what the guest queued on TX
    /// and writes all held guest→host bytes, giving up at `deadline`.
    pub fn flush_before_exit(&mut self, deadline: Instant) {
        self.process_tx();
        self.muxer.flush_all(deadline);
    }

    /// Moves guest TX packets to the muxer.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mem = &active.mem;
        let queue = &mut active.queues[TX_QUEUE];
        let mut used = false;
        while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Header::from_packet(&pkt);
                    // `len` is at most MAX_PKT_DATA (checked by the parser).
                    let len = match pkt.data_slice() {
                        Some(data) => data.copy_to(&mut self.scratch[..hdr.len as usize]),
                        None => 0,
                    };
                    self.muxer.send_pkt(&hdr, &self.scratch[..len], now);
                }
                Err(error) => {
                    warn_limited!(self.log, %error, "vsock: dropping malformed TX packet");
                }
            }
            if let Err(error) = queue.add_used(mem, head, 0) {
                warn_limited!(self.log, %error, "vsock: cannot return TX buffer");
            }
            used = true;
        }
        if used {
            signal(&active.interrupt, &mut self.log);
        }
    }

    /// Fills guest RX buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mem = &active.mem;
        let queue = &mut active.queues[RX_QUEUE];
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                self.muxer.set_rx_starved(true);
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    let room = pkt
                        .data_slice()
                        .map_or(0, |d| d.len())
                        .min(MAX_PKT_DATA as usize);
                    let Some(hdr) = self.muxer.recv_pkt(&mut self.scratch[..room], now) else {
                        // Nothing to send after all: leave the buffer to the guest.
                        queue.go_to_previous_position();
                        break;
                    };
                    write_rx(&mut pkt, &hdr, &self.scratch[..hdr.len as usize])
                        .map_err(|error| {
                            warn_limited!(self.log, %error, "vsock: cannot write RX packet");
                        })
                        .unwrap_or(0)
                }
                Err(error) => {
                    warn_limited!(self.log, %error, "vsock: unusable RX buffer");
                    0
                }
            };
            if let Err(error) = queue.add_used(mem, head, len) {
                warn_limited!(self.log, %error, "vsock: cannot return RX buffer");
            }
            used = true;
        }
        if used {
            signal(&active.interrupt, &mut self.log);
        }
    }

    /// Arms the timer for the muxer's next deadline, or disarms it.
    fn arm_timer(&mut self) {
        let next = self.muxer.next_deadline();
        if next == self.timer_armed_for {
            return;
        }
        let result = match next {
            Some(deadline) => {
                // A zero duration would disarm the timer.
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(wait, None)
            }
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_armed_for = next,
            Err(error) => tracing::warn!(%error, "vsock: cannot arm timer"),
        }
    }
}

fn write_rx<B: vm_memory::bitmap::BitmapSlice>(
    pkt: &mut VsockPacket<'_, B>,
    hdr: &Header,
    data: &[u8],
) -> Result<u32, String> {
    use vm_memory::Bytes;
    if !data.is_empty() {
        let slice = pkt.data_slice().ok_or("no data buffer")?;
        slice.write_slice(data, 0).map_err(|e| e.to_string())?;
    }
    pkt.set_header_from_raw(&hdr.to_bytes())
        .map_err(|e| e.to_string())?;
    Ok((HDR_SIZE + data.len()) as u32)
}

fn signal(interrupt: &Interrupt, log: &mut RateLimitedLog) {
    if let Err(error) = interrupt.signal_used_queue() {
        warn_limited!(log, %error, "vsock: cannot raise interrupt");
    }
}

/// A timerfd whose read never blocks: re-arming it between epoll reporting
/// it and us reading it would otherwise hang the event thread.
fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl on an fd we own; the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// Drains a timerfd (8-byte expiry count) without blocking.
fn drain_timer(timer: &TimerFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into `buf`; the fd is non-blocking.
    unsafe { libc::read(timer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds: Vec<Events> = self
            .queue_events
            .iter()
            .zip([token::RX, token::TX, token::EVENT])
            .map(|(fd, tok)| Events::with_data(fd, tok, EventSet::IN))
            .collect();
        fds.push(Events::with_data(
            self.muxer.listener(),
            token::LISTENER,
            EventSet::IN,
        ));
        fds.push(Events::with_data(&self.timer, token::TIMER, EventSet::IN));
        fds.push(Events::with_data(&self.kick, token::KICK, EventSet::IN));
        for events in fds {
            if let Err(error) = ops.add(events) {
                tracing::error!(?error, "vsock: cannot register with the event manager");
            }
        }
        // Anything that happened before registration (activation).
        self.process_rx();
        self.muxer.sync_epoll(ops);
        self.arm_timer();
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        match events.data() {
            token::RX => {
                let _ = self.queue_events[RX_QUEUE].read();
                if self.active.is_some() {
                    // The guest refilled RX: host streams may be read again.
                    self.muxer.set_rx_starved(false);
                }
            }
            token::TX => {
                let _ = self.queue_events[TX_QUEUE].read();
                self.process_tx();
            }
            token::EVENT => {
                let _ = self.queue_events[EVENT_QUEUE].read();
            }
            token::LISTENER => self.muxer.accept_host(now),
            token::TIMER => {
                drain_timer(&self.timer);
                self.timer_armed_for = None;
                self.muxer.process_deadlines(now);
            }
            token::KICK => {
                let _ = self.kick.read();
            }
            TOKEN_STREAM => self
                .muxer
                .handle_stream_event(events.fd(), events.event_set(), now),
            other => tracing::warn!(token = other, "vsock: event with unknown token"),
        }
        self.process_rx();
        self.muxer.sync_epoll(ops);
        self.arm_timer();
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Nothing beyond VERSION_1 (added by the transport): stream sockets
    /// are implied, and without EVENT_IDX every used buffer interrupts.
    fn avail_features(&self) -> u64 {
        0
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    /// Config space is `le64 guest_cid` (plus nothing we implement).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
            return;
        };
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn_limited!(
            self.log,
            offset,
            len = data.len(),
            "vsock: guest wrote read-only config"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Interrupt,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        self.muxer.set_rx_starved(false);
        // Let the event thread deliver what waited for activation.
        let _ = self.kick.write(1);
        Ok(())
    }

    /// Drops every connection: the guest driver forgets them on reset.
    fn reset(&mut self) -> bool {
        self.active = None;
        self.muxer.reset();
        // The event thread unregisters and closes the streams.
        let _ = self.kick.write(1);
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.muxer.close_doomed_unregistered();
        // Free the path for the next VMM; only the socket we bound.
        let _ = std::fs::remove_file(self.muxer.uds_path());
    }
}

#[cfg(test)]
mod tests;
