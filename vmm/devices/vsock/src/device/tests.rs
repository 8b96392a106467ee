//! Device tests against real guest memory, hand-built rings and a real
//! `EventManager`: the guest side is played by the test through the rings,
//! the host side through real unix sockets.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use husk_virtio::InterruptStatus;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::connection::CONN_BUF_ALLOC;
use crate::packet::{op, shutdown, TYPE_STREAM, VMADDR_CID_HOST};

const CID: u64 = 3;
const QSIZE: u16 = QUEUE_SIZE;
const MEM_SIZE: usize = 0x100_0000;
const BUF_START: u64 = 0x4_0000;
const RX_DATA: u32 = 4096;

fn unique_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "husk-vsock-{}-{}-{}",
        std::process::id(),
        name,
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Service path for guest connects to `port`.
fn service_path(uds: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{}", uds.display(), port))
}

struct Ring {
    mock: MockSplitQueue<'static, GuestMemory>,
    next_desc: u16,
    avail: u16,
    seen_used: u16,
}

impl Ring {
    fn new(mem: &'static GuestMemory, base: u64) -> Self {
        Self {
            mock: MockSplitQueue::create(mem, GuestAddress(base), QSIZE),
            next_desc: 0,
            avail: 0,
            seen_used: 0,
        }
    }

    /// Stores raw descriptors (their `next` as given) and offers `head`.
    fn store(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mock.desc_table().store(index, desc).unwrap();
    }

    fn offer(&mut self, head: u16) {
        let avail = self.mock.avail();
        avail
            .ring()
            .ref_at(usize::from(self.avail % QSIZE))
            .unwrap()
            .store(head);
        self.avail = self.avail.wrapping_add(1);
        avail.idx().store(self.avail);
    }

    /// Adds a well-linked chain of `(addr, len, flags)` and offers it.
    fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            if i + 1 < descs.len() {
                self.store(
                    index,
                    addr,
                    len,
                    flags | VRING_DESC_F_NEXT as u16,
                    self.next_desc,
                );
            } else {
                self.store(index, addr, len, flags, 0);
            }
        }
        self.offer(head);
        head
    }

    fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    fn next_used(&mut self) -> Option<VirtqUsedElem> {
        if self.used_idx() == self.seen_used {
            return None;
        }
        let elem = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(self.seen_used % QSIZE))
            .unwrap()
            .load();
        self.seen_used = self.seen_used.wrapping_add(1);
        Some(elem)
    }
}

struct Harness {
    mem: &'static GuestMemory,
    rx: Ring,
    tx: Ring,
    next_buf: u64,
    rx_bufs: HashMap<u16, (u64, u64)>,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    uds: PathBuf,
    /// Host service sockets to remove, even when a test panics.
    services: Vec<PathBuf>,
}

impl Harness {
    fn new(name: &str) -> Self {
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let rx = Ring::new(mem, 0);
        let tx = Ring::new(mem, 0x1_0000);
        let ev = Ring::new(mem, 0x2_0000);
        let uds = unique_path(name);
        let dev = Arc::new(Mutex::new(Vsock::new(CID, uds.clone()).unwrap()));
        let queues = vec![
            rx.mock.create_queue::<Queue>().unwrap(),
            tx.mock.create_queue::<Queue>().unwrap(),
            ev.mock.create_queue::<Queue>().unwrap(),
        ];
        let interrupt = Interrupt::new(
            InterruptStatus::default(),
            Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        );
        dev.lock()
            .unwrap()
            .activate(mem.clone(), interrupt, queues)
            .unwrap();
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self {
            mem,
            rx,
            tx,
            next_buf: BUF_START,
            rx_bufs: HashMap::new(),
            dev,
            em,
            uds,
            services: Vec::new(),
        }
    }

    /// Binds a host service the guest can connect to on `port`.
    fn listen(&mut self, port: u32) -> UnixListener {
        let path = service_path(&self.uds, port);
        self.services.push(path.clone());
        UnixListener::bind(path).unwrap()
    }

    fn dev(&self) -> MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len > MEM_SIZE as u64 {
            self.next_buf = BUF_START;
        }
        let addr = self.next_buf;
        self.next_buf += len.next_multiple_of(64);
        addr
    }

    fn pump(&mut self) {
        for _ in 0..4 {
            self.em.run_with_timeout(5).unwrap();
        }
    }

    fn kick(&self, queue: usize) {
        self.dev().queue_events()[queue].write(1).unwrap();
    }

    /// Offers `n` RX buffers (header + RX_DATA bytes) and kicks RX.
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let hdr = self.alloc(HDR_SIZE as u64);
            let data = self.alloc(u64::from(RX_DATA));
            let w = VRING_DESC_F_WRITE as u16;
            let head = self
                .rx
                .add_chain(&[(hdr, HDR_SIZE as u32, w), (data, RX_DATA, w)]);
            self.rx_bufs.insert(head, (hdr, data));
        }
        self.kick(RX_QUEUE);
        self.pump();
    }

    /// Puts a packet on TX (header and data in separate descriptors).
    fn send(&mut self, hdr: Header, data: &[u8]) {
        let haddr = self.alloc(HDR_SIZE as u64);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(haddr))
            .unwrap();
        if data.is_empty() {
            self.tx.add_chain(&[(haddr, HDR_SIZE as u32, 0)]);
        } else {
            let daddr = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(daddr)).unwrap();
            self.tx
                .add_chain(&[(haddr, HDR_SIZE as u32, 0), (daddr, data.len() as u32, 0)]);
        }
        self.kick(TX_QUEUE);
        self.pump();
    }

    /// The next packet the device put in RX, if any (no pumping).
    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let elem = self.rx.next_used()?;
        let (haddr, daddr) = self.rx_bufs[&(elem.id() as u16)];
        assert!(elem.len() as usize >= HDR_SIZE, "short RX used len");
        let mut raw = [0u8; HDR_SIZE];
        self.mem.read_slice(&mut raw, GuestAddress(haddr)).unwrap();
        let hdr = Header::from_bytes(&raw);
        assert_eq!(elem.len() as usize, HDR_SIZE + hdr.len as usize);
        let mut data = vec![0u8; hdr.len as usize];
        self.mem.read_slice(&mut data, GuestAddress(daddr)).unwrap();
        Some((hdr, data))
    }

    /// Pumps until a packet arrives (or panics after ~3 s).
    fn recv_wait(&mut self) -> (Header, Vec<u8>) {
        for _ in 0..300 {
            if let Some(p) = self.recv() {
                return p;
            }
            self.em.run_with_timeout(10).unwrap();
        }
        panic!("no RX packet arrived");
    }

    fn guest_hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: VMADDR_CID_HOST,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }

    /// Host connects with CONNECT `port`; returns the stream and the
    /// guest-side REQUEST header.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut stream = UnixStream::connect(&self.uds).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let (req, _) = self.recv_wait();
        (stream, req)
    }

    /// Full host-initiated handshake; returns the stream and local port.
    fn host_established(&mut self, port: u32, guest_buf_alloc: u32) -> (UnixStream, u32) {
        let (mut stream, req) = self.host_connect(port);
        assert_eq!(req.op, op::REQUEST);
        let mut resp = self.guest_hdr(op::RESPONSE, port, req.src_port);
        resp.buf_alloc = guest_buf_alloc;
        self.send(resp, &[]);
        let expected = format!("OK {}\n", req.src_port);
        let mut line = vec![0u8; expected.len()];
        stream.read_exact(&mut line).unwrap();
        assert_eq!(String::from_utf8(line).unwrap(), expected);
        (stream, req.src_port)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
        for path in &self.services {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[test]
fn config_space_is_the_le_guest_cid() {
    let path = unique_path("config");
    let dev = Vsock::new(0x0102_0304_0506_0708, path.clone()).unwrap();
    let mut full = [0u8; 8];
    dev.read_config(0, &mut full);
    assert_eq!(full, [8, 7, 6, 5, 4, 3, 2, 1]);

    let mut part = [0u8; 4];
    dev.read_config(2, &mut part);
    assert_eq!(part, [6, 5, 4, 3]);

    let mut straddle = [0xaa_u8; 4];
    dev.read_config(6, &mut straddle);
    assert_eq!(straddle, [2, 1, 0xaa, 0xaa]);

    let mut past = [0xaa_u8; 4];
    dev.read_config(8, &mut past);
    assert_eq!(past, [0xaa; 4]);
    dev.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0xaa; 4]);

    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_eq!(dev.queue_events().len(), 3);
}

#[test]
fn taken_socket_path_is_an_error_and_is_left_alone() {
    let path = unique_path("taken");
    std::fs::write(&path, b"not ours").unwrap();
    let err = Vsock::new(CID, path.clone()).err().expect("must fail");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not ours");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn host_initiated_connection_carries_bytes_both_ways() {
    let mut h = Harness::new("hostinit");
    h.give_rx(8);
    let (mut stream, req) = h.host_connect(1024);
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(req.src_cid, VMADDR_CID_HOST);
    assert_eq!(req.dst_cid, CID);
    assert_eq!(req.dst_port, 1024);
    assert_eq!(req.type_, TYPE_STREAM);
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let local = req.src_port;

    h.send(h.guest_hdr(op::RESPONSE, 1024, local), &[]);
    let mut line = [0u8; 64];
    let n = stream.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());

    // host → guest
    stream.write_all(b"hello guest").unwrap();
    let (rw, data) = h.recv_wait();
    assert_eq!(rw.op, op::RW);
    assert_eq!((rw.src_port, rw.dst_port), (local, 1024));
    assert_eq!(data, b"hello guest");

    // guest → host
    let mut pkt = h.guest_hdr(op::RW, 1024, local);
    pkt.len = 10;
    h.send(pkt, b"hello host");
    let mut got = [0u8; 10];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");

    // Guest closes: the device answers RST and forgets the connection.
    let mut sd = h.guest_hdr(op::SHUTDOWN, 1024, local);
    sd.flags = shutdown::BOTH;
    h.send(sd, &[]);
    let (rst, _) = h.recv_wait();
    assert_eq!(rst.op, op::RST);
    assert_eq!(h.dev().connection_count(), 0);
    assert_eq!(stream.read(&mut got).unwrap(), 0, "host sees EOF");
}

#[test]
fn host_close_sends_shutdown_then_guest_rst_drops_it() {
    let mut h = Harness::new("hostclose");
    h.give_rx(8);
    let (stream, local) = h.host_established(77, 64 * 1024);
    drop(stream);
    h.pump();
    let (sd, _) = h.recv_wait();
    assert_eq!(sd.op, op::SHUTDOWN);
    assert_eq!(sd.flags, shutdown::BOTH);
    assert_eq!(h.dev().connection_count(), 1);
    h.send(h.guest_hdr(op::RST, 77, local), &[]);
    assert_eq!(h.dev().connection_count(), 0);
}

#[test]
fn guest_initiated_connect_reaches_listener_or_gets_rst() {
    let mut h = Harness::new("guestinit");
    h.give_rx(8);
    let listener = h.listen(5000);

    h.send(h.guest_hdr(op::REQUEST, 40000, 5000), &[]);
    let (resp, _) = h.recv_wait();
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 40000));
    assert_eq!((resp.src_cid, resp.dst_cid), (VMADDR_CID_HOST, CID));
    let (mut host, _) = listener.accept().unwrap();

    let mut pkt = h.guest_hdr(op::RW, 40000, 5000);
    pkt.len = 4;
    h.send(pkt, b"ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    host.write_all(b"pong").unwrap();
    let (rw, data) = h.recv_wait();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"pong"[..]));

    // Nobody listens on 5001.
    h.send(h.guest_hdr(op::REQUEST, 40001, 5001), &[]);
    let (rst, _) = h.recv_wait();
    assert_eq!(rst.op, op::RST);
    assert_eq!((rst.src_port, rst.dst_port), (5001, 40001));
    assert_eq!(h.dev().connection_count(), 1);
}

#[test]
fn malformed_tx_chains_are_dropped_and_the_queue_keeps_working() {
    let mut h = Harness::new("malformed");
    h.give_rx(16);
    let mut submitted: u16 = 0;
    let good = |op: u16| Header {
        src_cid: CID,
        dst_cid: VMADDR_CID_HOST,
        src_port: 1,
        dst_port: 2,
        type_: TYPE_STREAM,
        op,
        ..Header::default()
    };

    // Header descriptor shorter than a header.
    let a = h.alloc(64);
    h.tx.add_chain(&[(a, 20, 0)]);
    submitted += 1;
    // Header descriptor outside guest memory.
    h.tx.add_chain(&[(0x4000_0000, HDR_SIZE as u32, 0)]);
    submitted += 1;
    // Header straddling the end of guest memory.
    h.tx.add_chain(&[(MEM_SIZE as u64 - 10, HDR_SIZE as u32, 0)]);
    submitted += 1;
    // len larger than the data descriptor.
    let mut rw = good(op::RW);
    rw.len = 1000;
    let (ha, da) = (h.alloc(64), h.alloc(128));
    h.mem.write_slice(&rw.to_bytes(), GuestAddress(ha)).unwrap();
    h.tx.add_chain(&[(ha, HDR_SIZE as u32, 0), (da, 100, 0)]);
    submitted += 1;
    // Oversized len field (4 GiB - 1).
    rw.len = u32::MAX;
    let ha2 = h.alloc(64);
    h.mem
        .write_slice(&rw.to_bytes(), GuestAddress(ha2))
        .unwrap();
    h.tx.add_chain(&[(ha2, HDR_SIZE as u32, 0), (da, 100, 0)]);
    submitted += 1;
    // A loop: header -> data -> header, data too short for len.
    rw.len = 500;
    let ha3 = h.alloc(64);
    h.mem
        .write_slice(&rw.to_bytes(), GuestAddress(ha3))
        .unwrap();
    let i = h.tx.next_desc;
    h.tx.store(i, ha3, HDR_SIZE as u32, VRING_DESC_F_NEXT as u16, i + 1);
    h.tx.store(i + 1, da, 100, VRING_DESC_F_NEXT as u16, i);
    h.tx.next_desc += 2;
    h.tx.offer(i);
    submitted += 1;
    // next pointing outside the table.
    let i = h.tx.next_desc;
    h.tx.store(
        i,
        ha3,
        HDR_SIZE as u32,
        VRING_DESC_F_NEXT as u16,
        QSIZE + 44,
    );
    h.tx.next_desc += 1;
    h.tx.offer(i);
    submitted += 1;
    // Write-only header descriptor on TX.
    h.tx.add_chain(&[(ha3, HDR_SIZE as u32, VRING_DESC_F_WRITE as u16)]);
    submitted += 1;
    h.kick(TX_QUEUE);
    h.pump();
    assert!(h.recv().is_none(), "malformed chains produce nothing");

    // A chain through every descriptor of the table and back (longer than
    // the queue), then the table is reused from index 0.
    let mut big = good(op::RW);
    big.len = 64;
    let hb = h.alloc(64);
    h.mem
        .write_slice(&big.to_bytes(), GuestAddress(hb))
        .unwrap();
    for i in 0..QSIZE {
        h.tx.store(
            i,
            hb,
            HDR_SIZE as u32,
            VRING_DESC_F_NEXT as u16,
            (i + 1) % QSIZE,
        );
    }
    h.tx.offer(0);
    h.tx.next_desc = 0;
    submitted += 1;
    h.kick(TX_QUEUE);
    h.pump();

    // Wrong source cid: dropped, no RST.
    let mut bad_cid = good(op::REQUEST);
    bad_cid.src_cid = 99;
    h.send(bad_cid, &[]);
    submitted += 1;
    assert!(h.recv().is_none(), "bad cid is dropped silently");

    // Unknown op for no connection: RST back.
    h.send(good(99), &[]);
    submitted += 1;
    let (rst, _) = h.recv_wait();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 2, 1));

    // Unknown socket type: RST back.
    let mut dgram = good(op::REQUEST);
    dgram.type_ = 2;
    h.send(dgram, &[]);
    submitted += 1;
    assert_eq!(h.recv_wait().0.op, op::RST);

    // The queue still works: a request to a missing service is refused.
    h.send(good(op::REQUEST), &[]);
    submitted += 1;
    let (rst, _) = h.recv_wait();
    assert_eq!(rst.op, op::RST);
    assert_eq!(h.tx.used_idx(), submitted, "every chain was returned");
    assert_eq!(h.dev().connection_count(), 0);
}

#[test]
fn guest_sending_beyond_credit_is_reset_and_buffer_stays_bounded() {
    let mut h = Harness::new("flood");
    h.give_rx(32);
    let listener = h.listen(6000);
    h.send(h.guest_hdr(op::REQUEST, 50000, 6000), &[]);
    assert_eq!(h.recv_wait().0.op, op::RESPONSE);
    let (_host, _) = listener.accept().unwrap(); // never reads

    let chunk = vec![0x5a_u8; MAX_PKT_DATA as usize];
    let mut reset = false;
    for _ in 0..64 {
        let mut pkt = h.guest_hdr(op::RW, 50000, 6000);
        pkt.len = chunk.len() as u32;
        h.send(pkt, &chunk);
        assert!(h.dev().buffered_bytes() <= CONN_BUF_ALLOC as usize);
        while let Some((hdr, _)) = h.recv() {
            if hdr.op == op::RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset, "flooding guest was never reset");
    assert_eq!(h.dev().connection_count(), 0);
    assert_eq!(h.dev().buffered_bytes(), 0);
}

/// The host end of a refused handshake sees EOF (or a reset if we left
/// its surplus bytes unread).
fn assert_closed(stream: &mut UnixStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("stream not closed: {other:?}"),
    }
}

#[test]
fn bad_connect_lines_close_the_stream_and_the_device_keeps_serving() {
    let mut h = Harness::new("badconnect");
    h.give_rx(8);
    let bad: [&[u8]; 3] = [
        b"CONNECT abc\n",
        b"CONNECT 1111111111111111111111111111111111111111\n",
        b"CONNECT 12",
    ];
    for line in bad {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        h.pump();
        assert_closed(&mut s);
    }
    assert!(h.recv().is_none());
    assert_eq!(h.dev().connection_count(), 0);

    let (_s, req) = h.host_connect(1024);
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 1024));
}

#[test]
fn silent_host_client_is_dropped_after_the_timeout() {
    let mut h = Harness::new("silent");
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONN").unwrap();
    let start = Instant::now();
    while start.elapsed() < crate::handshake::HANDSHAKE_TIMEOUT + Duration::from_secs(1) {
        h.em.run_with_timeout(50).unwrap();
    }
    assert_closed(&mut s);
}

#[test]
fn host_to_guest_data_stops_at_credit_and_resumes_on_update() {
    let mut h = Harness::new("credit");
    h.give_rx(16);
    let (mut stream, local) = h.host_established(88, 100);
    stream.write_all(&[7u8; 300]).unwrap();
    h.pump();
    let mut total = 0;
    while let Some((hdr, data)) = h.recv() {
        assert_eq!(hdr.op, op::RW);
        total += data.len();
    }
    assert_eq!(total, 100, "exactly the credit");
    assert_eq!(
        h.em.run_with_timeout(0).unwrap(),
        0,
        "no credit: the stream must not be polled (level-triggered spin)"
    );
    assert!(h.recv().is_none(), "nothing beyond the credit");

    let mut update = h.guest_hdr(op::CREDIT_UPDATE, 88, local);
    update.buf_alloc = 100;
    update.fwd_cnt = 100;
    h.send(update, &[]);
    let (hdr, data) = h.recv_wait();
    assert_eq!(hdr.op, op::RW);
    assert_eq!(data.len(), 100);
    h.pump();
    assert!(h.recv().is_none());

    // A credit request is answered with our window.
    h.send(h.guest_hdr(op::CREDIT_REQUEST, 88, local), &[]);
    let (hdr, _) = h.recv_wait();
    assert_eq!(hdr.op, op::CREDIT_UPDATE);
    assert_eq!(hdr.buf_alloc, CONN_BUF_ALLOC);
}

#[test]
fn rx_starvation_pauses_reads_until_the_guest_refills() {
    let mut h = Harness::new("starve");
    h.give_rx(3);
    let (stream, _local) = h.host_established(99, 1 << 20);
    // REQUEST used one buffer; two are left.
    let chunk = vec![1u8; RX_DATA as usize];
    for _ in 0..4 {
        (&stream).write_all(&chunk).unwrap();
    }
    h.pump();
    let mut got = 0;
    while let Some((_, data)) = h.recv() {
        got += data.len();
    }
    assert_eq!(got, 2 * RX_DATA as usize);
    assert_eq!(
        h.em.run_with_timeout(0).unwrap(),
        0,
        "RX starved: the stream must not be polled (level-triggered spin)"
    );
    // Host hangs up while starved: EPOLLHUP must not spin either.
    drop(stream);
    assert_eq!(h.em.run_with_timeout(0).unwrap(), 0);
    h.give_rx(4);
    h.pump();
    let mut ops = Vec::new();
    while let Some((hdr, data)) = h.recv() {
        got += data.len();
        ops.push(hdr.op);
    }
    assert_eq!(got, 4 * RX_DATA as usize);
    // The hang-up is noticed only after the data: SHUTDOWN comes last.
    assert_eq!(ops, [op::RW, op::RW, op::SHUTDOWN]);
}

#[test]
fn reset_drops_connections_and_closes_host_streams() {
    let mut h = Harness::new("reset");
    h.give_rx(8);
    let (mut stream, _) = h.host_established(1, 4096);
    assert!(h.dev().reset());
    h.pump();
    assert_eq!(h.dev().connection_count(), 0);
    assert!(!h.dev().is_active());
    assert_closed(&mut stream);
}

#[test]
fn flush_before_exit_delivers_held_bytes() {
    let mut h = Harness::new("flush");
    h.give_rx(8);
    let listener = h.listen(7000);
    h.send(h.guest_hdr(op::REQUEST, 1, 7000), &[]);
    assert_eq!(h.recv_wait().0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    // Fill the socket so the device must hold bytes.
    let chunk = vec![9u8; MAX_PKT_DATA as usize];
    let mut sent = 0usize;
    while h.dev().buffered_bytes() == 0 && sent < 1 << 20 {
        let mut pkt = h.guest_hdr(op::RW, 1, 7000);
        pkt.len = chunk.len() as u32;
        h.send(pkt, &chunk);
        sent += chunk.len();
    }
    assert!(h.dev().buffered_bytes() > 0);
    let reader = std::thread::spawn(move || {
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        host.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        while n < sent {
            match host.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    });
    h.dev()
        .flush_before_exit(Instant::now() + Duration::from_secs(3));
    assert_eq!(h.dev().buffered_bytes(), 0);
    assert_eq!(reader.join().unwrap(), sent);
}

// --- overlapping descriptor chains ------------------------------------------

/// Reads `len` bytes of guest memory at `addr`.
fn guest_bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

#[test]
fn tx_chain_whose_header_and_data_overlap_is_forwarded_verbatim() {
    let mut h = Harness::new("overlap-tx");
    h.give_rx(8);
    let listener = h.listen(5100);
    h.send(h.guest_hdr(op::REQUEST, 41000, 5100), &[]);
    assert_eq!(h.recv_wait().0.op, op::RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let before = h.tx.used_idx();

    // The data descriptor starts at the header itself (full overlap), then
    // inside it (partial overlap): the payload is whatever guest memory
    // holds there, header bytes included.
    for data_offset in [0u64, 20] {
        let mut rw = h.guest_hdr(op::RW, 41000, 5100);
        rw.len = 64;
        let ha = h.alloc(256);
        let filler: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
        h.mem.write_slice(&filler, GuestAddress(ha)).unwrap();
        h.mem.write_slice(&rw.to_bytes(), GuestAddress(ha)).unwrap();
        let expected = guest_bytes(h.mem, ha + data_offset, 64);
        h.tx.add_chain(&[(ha, HDR_SIZE as u32, 0), (ha + data_offset, 64, 0)]);
        h.kick(TX_QUEUE);
        h.pump();
        let mut got = vec![0u8; 64];
        host.read_exact(&mut got).unwrap();
        assert_eq!(got, expected, "data at header offset {data_offset}");
    }
    assert_eq!(h.tx.used_idx(), before.wrapping_add(2), "chains returned");
    assert_eq!(h.dev().connection_count(), 1);

    // The connection and both queues still work.
    let mut ping = h.guest_hdr(op::RW, 41000, 5100);
    ping.len = 4;
    h.send(ping, b"ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    host.write_all(b"pong").unwrap();
    let (rw, data) = h.recv_wait();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"pong"[..]));
}

#[test]
fn rx_buffer_over_the_rx_descriptor_table_does_not_stop_the_device() {
    let mut h = Harness::new("overlap-rxtable");
    let w = VRING_DESC_F_WRITE as u16;
    let table = h.rx.mock.desc_table_addr().0;
    // Chain 0 (descriptors 0, 1): its header buffer covers descriptors 2..4
    // of the RX table. Chain 2 (descriptors 2, 3) is valid when offered, but
    // the header the device writes into chain 0 turns it into garbage.
    let bad_hdr = table + 2 * 16;
    let data0 = h.alloc(u64::from(RX_DATA));
    let head0 =
        h.rx.add_chain(&[(bad_hdr, HDR_SIZE as u32, w), (data0, RX_DATA, w)]);
    h.rx_bufs.insert(head0, (bad_hdr, data0));
    let (ha, da) = (h.alloc(HDR_SIZE as u64), h.alloc(u64::from(RX_DATA)));
    let head2 =
        h.rx.add_chain(&[(ha, HDR_SIZE as u32, w), (da, RX_DATA, w)]);
    h.rx_bufs.insert(head2, (ha, da));
    h.kick(RX_QUEUE);
    h.pump();

    // The first packet lands in chain 0, i.e. in the descriptor table.
    let (mut stream, req) = h.host_connect(1024);
    assert_eq!(head0, 0);
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 1024));
    assert_eq!(
        guest_bytes(h.mem, bad_hdr, HDR_SIZE),
        req.to_bytes(),
        "the header went over descriptors 2..4"
    );
    let local = req.src_port;
    let mut resp = h.guest_hdr(op::RESPONSE, 1024, local);
    resp.buf_alloc = 64 * 1024;
    h.send(resp, &[]);
    let expected = format!("OK {local}\n");
    let mut line = vec![0u8; expected.len()];
    stream.read_exact(&mut line).unwrap();
    assert_eq!(line, expected.as_bytes());

    // Host data now meets chain 2, whose descriptors are the header bytes:
    // the device must give that chain back (with nothing written) rather
    // than panic, spin or write through a garbage descriptor.
    stream.write_all(b"after the overlap").unwrap();
    h.pump();
    let elem = h.rx.next_used().expect("garbage chain 2 was not returned");
    assert_eq!((elem.id(), elem.len()), (u32::from(head2), 0));
    assert!(h.rx.next_used().is_none());

    // Fresh buffers (the test rewrites descriptors from 4 on): the data
    // that waited arrives, and the connection works both ways.
    h.give_rx(4);
    let (rw, data) = h.recv_wait();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (op::RW, local, 1024));
    assert_eq!(data, b"after the overlap");
    let mut pkt = h.guest_hdr(op::RW, 1024, local);
    pkt.len = 5;
    h.send(pkt, b"still");
    let mut got = [0u8; 5];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
}
