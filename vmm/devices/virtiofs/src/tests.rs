//! Device tests without KVM: a real `GuestMemoryMmap`, queues laid out by
//! `MockSplitQueue`, descriptor chains built by hand around FUSE requests,
//! the device driven through a real `EventManager`, and a real temporary
//! directory on the host.

use std::mem::size_of;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, ForgetIn, GetattrIn, InHeader, InitIn, InitOut, InterruptIn,
    Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, WriteIn, WriteOut, KERNEL_VERSION,
    ROOT_ID,
};
use husk_virtio::{ActivateError, GuestMemory, Interrupt, InterruptStatus, VirtioDevice};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{CONFIG_SPACE_SIZE, TAG_MAX_LEN};
use crate::device::{HIPRIO_QUEUE, REQUEST_QUEUE};
use crate::{Error, Fs, NUM_QUEUES, QUEUE_SIZE};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// Small driver-side queues; the device accepts anything up to QUEUE_SIZE.
const QSIZE: u16 = 64;
const QUEUE_ADDRS: [u64; NUM_QUEUES] = [0x0, 0x4000];
const DATA_START: u64 = 0x1_0000;
const MEM_SIZE: usize = 0x40_0000;
const REPLY_CAP: u32 = 0x2000;

const IN_HEADER: u32 = size_of::<InHeader>() as u32;
const OUT_HEADER: u32 = size_of::<OutHeader>() as u32;

/// One descriptor of a chain under construction.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    write: bool,
}

/// What the device put on the used ring for one chain.
#[derive(Debug, Clone, Copy)]
struct Used {
    id: u32,
    len: u32,
}

/// A FUSE reply read back from guest memory.
struct Reply {
    header: OutHeader,
    body: GuestAddress,
    used_len: u32,
}

/// The test's view of a shared host directory: `root/` holds a marker the
/// guest must never see, `root/shared/` is exported.
struct HostDirs {
    _tmp: tempfile::TempDir,
    shared: std::path::PathBuf,
}

fn host_dirs() -> HostDirs {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("outside-marker"), b"secret").unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    HostDirs { _tmp: tmp, shared }
}

/// A guest driver in miniature.
struct Guest {
    mem: &'static GuestMemory,
    queues: Vec<MockSplitQueue<'static, GuestMemory>>,
    dev: Arc<Mutex<Fs>>,
    manager: EventManager<Arc<Mutex<Fs>>>,
    irqfd: Arc<EventFd>,
    next_data: u64,
    used_seen: [u16; NUM_QUEUES],
    unique: u64,
}

impl Guest {
    /// A device on `shared`, registered with an event manager, queues laid
    /// out but not yet activated.
    fn new(shared: &Path) -> Self {
        // Leaked so the mock queues can borrow it for 'static; a few MiB per
        // test is fine.
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let queues = QUEUE_ADDRS
            .iter()
            .map(|&addr| MockSplitQueue::create(mem, GuestAddress(addr), QSIZE))
            .collect();
        let dev = Arc::new(Mutex::new(Fs::new("husk", shared).unwrap()));
        let mut manager = EventManager::new().unwrap();
        manager.add_subscriber(dev.clone());
        Self {
            mem,
            queues,
            dev,
            manager,
            irqfd: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            next_data: DATA_START,
            used_seen: [0; NUM_QUEUES],
            unique: 0,
        }
    }

    fn activated(shared: &Path) -> Self {
        let mut guest = Self::new(shared);
        guest.activate();
        guest
    }

    fn activate(&mut self) {
        self.activate_with(|_| {});
    }

    fn activate_with(&mut self, tweak: impl Fn(&mut Queue)) {
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let mut queue: Queue = q.create_queue().unwrap();
                tweak(&mut queue);
                queue
            })
            .collect();
        let interrupt = Interrupt::new(InterruptStatus::default(), self.irqfd.clone());
        self.dev
            .lock()
            .unwrap()
            .activate(self.mem.clone(), interrupt, queues)
            .unwrap();
        self.run();
    }

    /// Dispatches every pending event (the device may re-kick itself).
    fn run(&mut self) {
        for _ in 0..100 {
            if self.manager.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("device keeps generating events");
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).next_multiple_of(16).max(16);
        if self.next_data + len > MEM_SIZE as u64 {
            self.next_data = DATA_START;
        }
        let addr = self.next_data;
        self.next_data += len;
        addr
    }

    fn buffer(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u32);
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// Writes raw descriptors at the start of the table (every earlier
    /// chain has been completed, so the slots are free) and kicks.
    fn submit_raw(&mut self, queue: usize, descs: &[RawDescriptor]) {
        self.queues[queue].add_desc_chains(descs, 0).unwrap();
        self.dev.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
        self.run();
    }

    /// Submits a well-linked chain and returns the used element for it.
    fn submit(&mut self, queue: usize, descs: &[Desc]) -> Used {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut flags = if d.write { F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= F_NEXT;
                }
                SplitDescriptor::new(d.addr, d.len, flags, i as u16 + 1).into()
            })
            .collect();
        self.submit_raw(queue, &raw);
        self.take_used(queue).expect("chain was not completed")
    }

    /// The next used element, if the device added one since last time.
    fn take_used(&mut self, queue: usize) -> Option<Used> {
        let used = self.queues[queue].used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        if idx == self.used_seen[queue] {
            return None;
        }
        let slot = u64::from(self.used_seen[queue] % QSIZE);
        let elem = used.unchecked_add(4 + 8 * slot);
        self.used_seen[queue] = self.used_seen[queue].wrapping_add(1);
        Some(Used {
            id: self.mem.read_obj(elem).unwrap(),
            len: self.mem.read_obj(elem.unchecked_add(4)).unwrap(),
        })
    }

    fn used_idx(&self, queue: usize) -> u16 {
        let used = self.queues[queue].used_addr();
        self.mem.read_obj(used.unchecked_add(2)).unwrap()
    }

    fn interrupted(&self) -> bool {
        self.irqfd.read().is_ok()
    }

    fn header(&mut self, opcode: u32, nodeid: u64, args_len: usize) -> InHeader {
        self.unique += 1;
        InHeader {
            len: IN_HEADER + args_len as u32,
            opcode,
            unique: self.unique,
            nodeid,
            // SAFETY: plain getters without side effects.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            pid: 1,
            padding: 0,
        }
    }

    /// One FUSE request in a readable descriptor, the reply in a writable
    /// one; checks the reply is for this request.
    fn fuse(&mut self, queue: usize, opcode: Opcode, nodeid: u64, args: &[u8]) -> Reply {
        let header = self.header(opcode as u32, nodeid, args.len());
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(args);
        let req_addr = self.buffer(&request);
        let reply_addr = self.alloc(REPLY_CAP);
        let used = self.submit(
            queue,
            &[
                Desc {
                    addr: req_addr,
                    len: request.len() as u32,
                    write: false,
                },
                Desc {
                    addr: reply_addr,
                    len: REPLY_CAP,
                    write: true,
                },
            ],
        );
        assert_eq!(used.id, 0, "head index");
        let out: OutHeader = self.mem.read_obj(GuestAddress(reply_addr)).unwrap();
        assert_eq!(out.unique, header.unique, "reply to another request");
        assert_eq!(
            out.len, used.len,
            "used length disagrees with OutHeader.len"
        );
        Reply {
            header: out,
            body: GuestAddress(reply_addr + u64::from(OUT_HEADER)),
            used_len: used.len,
        }
    }

    fn body<T: ByteValued>(&self, reply: &Reply) -> T {
        assert_eq!(reply.header.error, 0, "FUSE error {}", reply.header.error);
        assert!(reply.used_len as usize >= OUT_HEADER as usize + size_of::<T>());
        self.mem.read_obj(reply.body).unwrap()
    }

    fn body_bytes(&self, reply: &Reply) -> Vec<u8> {
        let mut bytes = vec![0u8; (reply.used_len - OUT_HEADER) as usize];
        self.mem.read_slice(&mut bytes, reply.body).unwrap();
        bytes
    }

    fn init(&mut self) -> InitOut {
        let args = InitIn {
            major: KERNEL_VERSION,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        let reply = self.fuse(REQUEST_QUEUE, Opcode::Init, 0, args.as_slice());
        self.body(&reply)
    }

    /// LOOKUP; Err is the (negative) FUSE error.
    fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut, i32> {
        let mut args = name.to_vec();
        args.push(0);
        let reply = self.fuse(REQUEST_QUEUE, Opcode::Lookup, parent, &args);
        match reply.header.error {
            0 => Ok(self.body(&reply)),
            e => Err(e),
        }
    }

    fn getattr(&mut self, nodeid: u64) -> AttrOut {
        let args = GetattrIn::default();
        let reply = self.fuse(REQUEST_QUEUE, Opcode::Getattr, nodeid, args.as_slice());
        self.body(&reply)
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<OpenOut, i32> {
        let args = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let reply = self.fuse(REQUEST_QUEUE, Opcode::Open, nodeid, args.as_slice());
        match reply.header.error {
            0 => Ok(self.body(&reply)),
            e => Err(e),
        }
    }

    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Vec<u8> {
        let args = ReadIn {
            fh,
            size,
            ..Default::default()
        };
        let reply = self.fuse(REQUEST_QUEUE, Opcode::Read, nodeid, args.as_slice());
        assert_eq!(reply.header.error, 0);
        self.body_bytes(&reply)
    }

    fn release(&mut self, nodeid: u64, fh: u64) {
        let args = ReleaseIn {
            fh,
            ..Default::default()
        };
        let reply = self.fuse(REQUEST_QUEUE, Opcode::Release, nodeid, args.as_slice());
        assert_eq!(reply.header.error, 0);
    }
}

fn err_name(err: Error) -> String {
    err.to_string()
}

fn no_ino(e: &EntryOut) -> u64 {
    e.attr.ino
}

// --- construction and the virtio contract ---------------------------------

#[test]
fn constructor_rejects_bad_tags_naming_them() {
    let dirs = host_dirs();
    let err = err_name(Fs::new("", &dirs.shared).err().unwrap());
    assert!(err.contains("\"\"") && err.contains("0 bytes"), "{err}");
    let long = "t".repeat(TAG_MAX_LEN + 1);
    let err = err_name(Fs::new(&long, &dirs.shared).err().unwrap());
    assert!(err.contains(&long) && err.contains("37 bytes"), "{err}");
    assert!(Fs::new(&"t".repeat(TAG_MAX_LEN), &dirs.shared).is_ok());
}

#[test]
fn constructor_rejects_missing_dir_and_plain_file_naming_them() {
    let dirs = host_dirs();
    let missing = dirs.shared.join("does-not-exist");
    let err = Fs::new("t", &missing).err().unwrap();
    assert!(matches!(err, Error::SharedDirAccess { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");

    let file = dirs.shared.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = Fs::new("t", &file).err().unwrap();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file"), "{err}");
}

#[test]
fn device_identity_queues_and_features() {
    let dirs = host_dirs();
    let fs = Fs::new("husk", &dirs.shared).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(fs.queue_events().len(), NUM_QUEUES);
    assert_eq!(fs.avail_features(), husk_virtio::features::RING_EVENT_IDX);
    assert_eq!(fs.shared_dir(), dirs.shared.canonicalize().unwrap());
}

#[test]
fn config_space_through_the_device_and_writes_are_ignored() {
    let dirs = host_dirs();
    let mut fs = Fs::new("myfs", &dirs.shared).unwrap();
    let mut data = [0xffu8; CONFIG_SPACE_SIZE + 4];
    fs.read_config(0, &mut data);
    assert_eq!(&data[..4], b"myfs");
    assert!(data[4..TAG_MAX_LEN].iter().all(|&b| b == 0));
    assert_eq!(&data[TAG_MAX_LEN..CONFIG_SPACE_SIZE], &1u32.to_le_bytes());
    assert_eq!(&data[CONFIG_SPACE_SIZE..], &[0xff; 4], "past the end");

    fs.write_config(0, b"evil");
    let mut tag = [0u8; 4];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag, b"myfs");
}

#[test]
fn activate_checks_queue_count_and_double_activation() {
    let dirs = host_dirs();
    let mut guest = Guest::new(&dirs.shared);
    let mem = guest.mem.clone();
    let irq = Interrupt::new(InterruptStatus::default(), guest.irqfd.clone());
    let one: Queue = guest.queues[0].create_queue().unwrap();
    let err = guest
        .dev
        .lock()
        .unwrap()
        .activate(mem.clone(), irq.clone(), vec![one])
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
    guest.activate();
    assert!(guest.dev.lock().unwrap().is_activated());
    let err = guest
        .dev
        .lock()
        .unwrap()
        .activate(mem, irq, vec![])
        .unwrap_err();
    assert!(matches!(err, ActivateError::AlreadyActive));
}

#[test]
fn kicks_before_activation_are_ignored_and_activation_catches_up() {
    let dirs = host_dirs();
    let mut guest = Guest::new(&dirs.shared);
    let args = InitIn {
        major: KERNEL_VERSION,
        minor: 31,
        ..Default::default()
    };
    let header = guest.header(Opcode::Init as u32, 0, size_of::<InitIn>());
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(args.as_slice());
    let req = guest.buffer(&request);
    let reply = guest.alloc(REPLY_CAP);
    guest.submit_raw(
        REQUEST_QUEUE,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
    );
    assert!(
        guest.take_used(REQUEST_QUEUE).is_none(),
        "served before DRIVER_OK"
    );
    assert!(!guest.interrupted());

    guest.activate();
    let used = guest
        .take_used(REQUEST_QUEUE)
        .expect("served at activation");
    assert_eq!(used.len, OUT_HEADER + size_of::<InitOut>() as u32);
    assert!(guest.interrupted());
}

// --- FUSE round trips -----------------------------------------------------

#[test]
fn init_lookup_open_read_round_trip() {
    let dirs = host_dirs();
    let contents = b"hello from the host\n";
    std::fs::write(dirs.shared.join("greeting.txt"), contents).unwrap();
    let mut guest = Guest::activated(&dirs.shared);

    let init = guest.init();
    assert_eq!(init.major, KERNEL_VERSION);
    assert!(init.minor >= 31);
    assert!(guest.interrupted());

    let entry = guest.lookup(ROOT_ID, b"greeting.txt").unwrap();
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.size, contents.len() as u64);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let open = guest.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(guest.read(entry.nodeid, open.fh, 4096), contents);
    guest.release(entry.nodeid, open.fh);

    assert_eq!(
        guest.lookup(ROOT_ID, b"missing").map(|e| no_ino(&e)),
        Err(-libc::ENOENT)
    );
}

#[test]
fn create_and_write_from_the_guest_land_on_the_host() {
    let dirs = host_dirs();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();

    let name = b"from-guest.txt";
    let create = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0o022,
        fuse_flags: 0,
    };
    let mut args = create.as_slice().to_vec();
    args.extend_from_slice(name);
    args.push(0);
    let reply = guest.fuse(REQUEST_QUEUE, Opcode::Create, ROOT_ID, &args);
    let entry: EntryOut = guest.body(&reply);
    let open: OpenOut = guest
        .mem
        .read_obj(reply.body.unchecked_add(size_of::<EntryOut>() as u64))
        .unwrap();
    assert_ne!(entry.nodeid, 0);

    let data = b"written by the guest";
    let write = WriteIn {
        fh: open.fh,
        offset: 0,
        size: data.len() as u32,
        ..Default::default()
    };
    let mut args = write.as_slice().to_vec();
    args.extend_from_slice(data);
    let reply = guest.fuse(REQUEST_QUEUE, Opcode::Write, entry.nodeid, &args);
    let out: WriteOut = guest.body(&reply);
    assert_eq!(out.size, data.len() as u32);
    guest.release(entry.nodeid, open.fh);

    let on_host = std::fs::read(dirs.shared.join("from-guest.txt")).unwrap();
    assert_eq!(on_host, data);
    assert_eq!(guest.getattr(entry.nodeid).attr.size, data.len() as u64);
}

#[test]
fn hiprio_queue_serves_forget_and_interrupt() {
    let dirs = host_dirs();
    std::fs::write(dirs.shared.join("f"), b"x").unwrap();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();
    let entry = guest.lookup(ROOT_ID, b"f").unwrap();

    // FORGET and INTERRUPT have no reply: the chain carries only the
    // request and comes back with length 0.
    for (opcode, args) in [
        (Opcode::Forget, ForgetIn { nlookup: 1 }.as_slice().to_vec()),
        (
            Opcode::Interrupt,
            InterruptIn { unique: 12345 }.as_slice().to_vec(),
        ),
    ] {
        let header = guest.header(opcode as u32, entry.nodeid, args.len());
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(&args);
        let addr = guest.buffer(&request);
        let used = guest.submit(
            HIPRIO_QUEUE,
            &[Desc {
                addr,
                len: request.len() as u32,
                write: false,
            }],
        );
        assert_eq!(used.len, 0);
        assert!(guest.interrupted());
    }
    // The forgotten inode is gone from the server; a new lookup works.
    guest.getattr(ROOT_ID);
    assert!(guest.lookup(ROOT_ID, b"f").is_ok());
}

// --- malformed chains -----------------------------------------------------

/// Submits `descs`, checks the chain came back with `expect_len`, and that
/// the device still answers a valid request afterwards.
fn rejected_then_still_serving(guest: &mut Guest, descs: &[RawDescriptor], expect_len: u32) {
    let before = guest.used_idx(REQUEST_QUEUE);
    guest.submit_raw(REQUEST_QUEUE, descs);
    let used = guest.take_used(REQUEST_QUEUE).expect("chain not returned");
    assert_eq!(guest.used_idx(REQUEST_QUEUE), before.wrapping_add(1));
    assert_eq!(used.id, 0);
    assert_eq!(used.len, expect_len);
    let attr = guest.getattr(ROOT_ID);
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

fn malformed_guest() -> (HostDirs, Guest) {
    let dirs = host_dirs();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();
    (dirs, guest)
}

#[test]
fn header_shorter_than_in_header_is_rejected() {
    let (_dirs, mut guest) = malformed_guest();
    let req = guest.buffer(&[0xab; 20]);
    let reply = guest.alloc(REPLY_CAP);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, 20, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        0,
    );
}

#[test]
fn in_header_len_larger_than_the_chain_is_rejected() {
    let (_dirs, mut guest) = malformed_guest();
    let mut header = guest.header(Opcode::Lookup as u32, ROOT_ID, 6);
    header.len = 4096; // claims far more name bytes than the chain holds
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(b"name\0\0");
    let req = guest.buffer(&request);
    let reply = guest.alloc(REPLY_CAP);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        0,
    );
}

#[test]
fn huge_in_header_len_gets_an_error_reply_not_an_allocation() {
    let (_dirs, mut guest) = malformed_guest();
    let mut header = guest.header(Opcode::Lookup as u32, ROOT_ID, 0);
    header.len = u32::MAX;
    let req = guest.buffer(header.as_slice());
    let reply = guest.alloc(REPLY_CAP);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, IN_HEADER, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        OUT_HEADER,
    );
    let out: OutHeader = guest.mem.read_obj(GuestAddress(reply)).unwrap();
    assert_eq!(out.error, -libc::ENOMEM);
}

#[test]
fn descriptor_outside_guest_memory_is_rejected() {
    let (_dirs, mut guest) = malformed_guest();
    let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let reply = guest.alloc(REPLY_CAP);
    let outside = MEM_SIZE as u64 + 0x1000;
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(outside, header.len, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        0,
    );
    // Straddling the end of memory is no better.
    let req = MEM_SIZE as u64 - 8;
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, header.len, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        0,
    );
    // And a reply buffer outside memory.
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(GetattrIn::default().as_slice());
    let req = guest.buffer(&request);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
            SplitDescriptor::new(u64::MAX - 0x10, REPLY_CAP, F_WRITE, 0).into(),
        ],
        0,
    );
}

#[test]
fn looping_chain_is_cut_and_returned() {
    let (_dirs, mut guest) = malformed_guest();
    let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(GetattrIn::default().as_slice());
    let req = guest.buffer(&request);
    let len = request.len() as u32;
    // 0 -> 1 -> 0 -> ... : both readable, so there is nowhere to reply.
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, len, F_NEXT, 1).into(),
            SplitDescriptor::new(req, len, F_NEXT, 0).into(),
        ],
        0,
    );
    // A chain whose next index is past the queue is cut there too.
    rejected_then_still_serving(
        &mut guest,
        &[SplitDescriptor::new(req, len, F_NEXT, QSIZE + 5).into()],
        0,
    );
}

#[test]
fn writable_descriptor_where_the_request_should_be_is_rejected() {
    let (_dirs, mut guest) = malformed_guest();
    let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(GetattrIn::default().as_slice());
    let req = guest.buffer(&request);
    let reply = guest.alloc(REPLY_CAP);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT | F_WRITE, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        0,
    );
}

#[test]
fn readable_descriptor_where_the_reply_should_go_is_rejected() {
    let (_dirs, mut guest) = malformed_guest();
    let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(GetattrIn::default().as_slice());
    let req = guest.buffer(&request);
    let reply = guest.buffer(&[0x5a; REPLY_CAP as usize]);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, 0, 0).into(),
        ],
        0,
    );
    let mut untouched = vec![0u8; REPLY_CAP as usize];
    guest
        .mem
        .read_slice(&mut untouched, GuestAddress(reply))
        .unwrap();
    assert!(
        untouched.iter().all(|&b| b == 0x5a),
        "device wrote a readable buffer"
    );
}

#[test]
fn reply_buffer_too_small_for_the_header_is_returned() {
    let (_dirs, mut guest) = malformed_guest();
    let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(GetattrIn::default().as_slice());
    let req = guest.buffer(&request);
    let reply = guest.alloc(8);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, 8, F_WRITE, 0).into(),
        ],
        0,
    );
}

#[test]
fn unknown_opcode_gets_enosys() {
    let (_dirs, mut guest) = malformed_guest();
    let header = guest.header(9999, ROOT_ID, 0);
    let req = guest.buffer(header.as_slice());
    let reply = guest.alloc(REPLY_CAP);
    rejected_then_still_serving(
        &mut guest,
        &[
            SplitDescriptor::new(req, IN_HEADER, F_NEXT, 1).into(),
            SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into(),
        ],
        OUT_HEADER,
    );
    let out: OutHeader = guest.mem.read_obj(GuestAddress(reply)).unwrap();
    assert_eq!(out.error, -libc::ENOSYS);
    assert_eq!(out.unique, header.unique);
}

#[test]
fn requests_on_unknown_inodes_fail_cleanly() {
    let (_dirs, mut guest) = malformed_guest();
    for nodeid in [0, 2, 0xdead_beef, u64::MAX] {
        let reply = guest.fuse(
            REQUEST_QUEUE,
            Opcode::Getattr,
            nodeid,
            GetattrIn::default().as_slice(),
        );
        assert_eq!(reply.header.error, -libc::EBADF, "nodeid {nodeid:#x}");
    }
    let reply = guest.fuse(
        REQUEST_QUEUE,
        Opcode::Read,
        ROOT_ID,
        ReadIn {
            fh: 77,
            size: 16,
            ..Default::default()
        }
        .as_slice(),
    );
    assert!(reply.header.error < 0);
}

// --- confinement ----------------------------------------------------------

#[test]
fn dotdot_from_the_root_stays_in_the_shared_dir() {
    let dirs = host_dirs();
    std::fs::write(dirs.shared.join("inside-marker"), b"ok").unwrap();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();

    // The parent's marker exists on the host, but is not reachable.
    assert!(dirs.shared.join("../outside-marker").exists());
    assert_eq!(
        guest.lookup(ROOT_ID, b"outside-marker").map(|e| no_ino(&e)),
        Err(-libc::ENOENT)
    );

    let root = guest.getattr(ROOT_ID);
    let up = guest.lookup(ROOT_ID, b"..").unwrap();
    assert_eq!(up.attr.ino, root.attr.ino, ".. of the root is the root");
    assert_eq!(
        guest
            .lookup(up.nodeid, b"outside-marker")
            .map(|e| no_ino(&e)),
        Err(-libc::ENOENT)
    );
    assert!(guest.lookup(up.nodeid, b"inside-marker").is_ok());

    // Twice up is still the root, and names with '/' are refused outright.
    let upup = guest.lookup(up.nodeid, b"..").unwrap();
    assert_eq!(upup.attr.ino, root.attr.ino);
    assert_eq!(
        guest
            .lookup(ROOT_ID, b"../outside-marker")
            .map(|e| no_ino(&e)),
        Err(-libc::EINVAL)
    );
    assert_eq!(
        guest.lookup(ROOT_ID, b"/etc").map(|e| no_ino(&e)),
        Err(-libc::EINVAL)
    );
}

#[test]
fn symlinks_are_returned_to_the_guest_not_followed_on_the_host() {
    let dirs = host_dirs();
    let outside = dirs.shared.parent().unwrap().join("outside-marker");
    symlink(&outside, dirs.shared.join("abs-link")).unwrap();
    symlink("../outside-marker", dirs.shared.join("rel-link")).unwrap();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();

    for (name, target) in [
        (&b"abs-link"[..], outside.to_str().unwrap().as_bytes()),
        (&b"rel-link"[..], &b"../outside-marker"[..]),
    ] {
        let entry = guest.lookup(ROOT_ID, name).unwrap();
        assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFLNK, "link itself");
        assert_ne!(entry.attr.size, 6, "not the target's attributes");
        let reply = guest.fuse(REQUEST_QUEUE, Opcode::Readlink, entry.nodeid, &[]);
        assert_eq!(reply.header.error, 0);
        assert_eq!(guest.body_bytes(&reply), target);
        // Opening the link inode does not open its host-side target.
        assert!(guest.open(entry.nodeid, libc::O_RDONLY).is_err());
    }
}

#[test]
fn a_busy_queue_yields_after_its_budget_and_resumes() {
    let dirs = host_dirs();
    let mut guest = Guest::activated(&dirs.shared);
    guest.dev.lock().unwrap().set_budget(2);
    let mut descs = Vec::new();
    for i in 0..3u16 {
        let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(GetattrIn::default().as_slice());
        let req = guest.buffer(&request);
        let reply = guest.alloc(REPLY_CAP);
        descs.push(SplitDescriptor::new(req, request.len() as u32, F_NEXT, 2 * i + 1).into());
        descs.push(SplitDescriptor::new(reply, REPLY_CAP, F_WRITE, 0).into());
    }
    guest.queues[REQUEST_QUEUE]
        .add_desc_chains(&descs, 0)
        .unwrap();
    guest.dev.lock().unwrap().queue_events()[REQUEST_QUEUE]
        .write(1)
        .unwrap();
    assert_eq!(guest.manager.run_with_timeout(0).unwrap(), 1);
    assert_eq!(guest.used_idx(REQUEST_QUEUE), 2, "budget not honoured");
    // The device re-kicked itself; the next round finishes the work.
    assert_eq!(guest.manager.run_with_timeout(0).unwrap(), 1);
    assert_eq!(guest.used_idx(REQUEST_QUEUE), 3);
    let heads: Vec<u32> = (0..3)
        .map(|_| guest.take_used(REQUEST_QUEUE).unwrap().id)
        .collect();
    assert_eq!(heads, [0, 2, 4]);
}

#[test]
fn non_utf8_shared_dir_is_refused_by_name() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dirs = host_dirs();
    let odd = dirs.shared.join(OsStr::from_bytes(b"bad-\xff-name"));
    std::fs::create_dir(&odd).unwrap();
    let err = Fs::new("t", &odd).err().unwrap();
    assert!(matches!(err, Error::UnsupportedPath { .. }), "{err:?}");
    assert!(err.to_string().contains("bad-"), "{err}");
}

// --- notifications and reset ----------------------------------------------

#[test]
fn event_idx_keeps_avail_event_current() {
    let dirs = host_dirs();
    let mut guest = Guest::new(&dirs.shared);
    guest.activate_with(|q| q.set_event_idx(true));
    for _ in 0..3 {
        guest.getattr(ROOT_ID);
    }
    // avail_event lives after the used ring elements.
    let used = guest.queues[REQUEST_QUEUE].used_addr();
    let avail_event: u16 = guest
        .mem
        .read_obj(used.unchecked_add(4 + 8 * u64::from(QSIZE)))
        .unwrap();
    assert_eq!(avail_event, 3, "driver would stop kicking");
    let queue_next = guest
        .dev
        .lock()
        .unwrap()
        .active_queue(REQUEST_QUEUE)
        .unwrap()
        .next_avail();
    assert_eq!(queue_next, 3);
}

#[test]
fn event_idx_suppresses_unwanted_interrupts() {
    let dirs = host_dirs();
    let mut guest = Guest::new(&dirs.shared);
    guest.activate_with(|q| q.set_event_idx(true));
    while guest.interrupted() {}
    // used_event (after the avail ring) = 10: the driver wants to hear only
    // once the 11th chain is used.
    let avail = guest.queues[REQUEST_QUEUE].avail_addr();
    let used_event = avail.unchecked_add(4 + 2 * u64::from(QSIZE));
    guest.mem.write_obj(10u16, used_event).unwrap();
    guest.getattr(ROOT_ID);
    assert!(!guest.interrupted(), "interrupt despite used_event");
    guest.mem.write_obj(1u16, used_event).unwrap();
    guest.getattr(ROOT_ID);
    assert!(guest.interrupted());
}

#[test]
fn reset_forgets_guest_state_and_allows_reactivation() {
    let dirs = host_dirs();
    std::fs::write(dirs.shared.join("f"), b"x").unwrap();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();
    let entry = guest.lookup(ROOT_ID, b"f").unwrap();

    assert!(guest.dev.lock().unwrap().reset());
    assert!(!guest.dev.lock().unwrap().is_activated());

    // Fresh rings, as a driver would set up after reset.
    guest.queues = QUEUE_ADDRS
        .iter()
        .map(|&addr| MockSplitQueue::create(guest.mem, GuestAddress(addr), QSIZE))
        .collect();
    guest.used_seen = [0; NUM_QUEUES];
    guest.activate();
    guest.init();
    let reply = guest.fuse(
        REQUEST_QUEUE,
        Opcode::Getattr,
        entry.nodeid,
        GetattrIn::default().as_slice(),
    );
    assert_eq!(reply.header.error, -libc::EBADF, "old inode survived reset");
    assert!(guest.lookup(ROOT_ID, b"f").is_ok());
}

#[test]
fn reset_fails_when_the_shared_dir_is_gone() {
    let dirs = host_dirs();
    let mut guest = Guest::activated(&dirs.shared);
    guest.init();
    std::fs::remove_dir(&dirs.shared).unwrap();
    assert!(!guest.dev.lock().unwrap().reset());
    assert!(guest.dev.lock().unwrap().is_activated());
    // The old root fd still answers; a new INIT (which reopens the root by
    // path) gets an error reply instead of a panic.
    guest.getattr(ROOT_ID);
    let args = InitIn {
        major: KERNEL_VERSION,
        minor: 31,
        ..Default::default()
    };
    let reply = guest.fuse(REQUEST_QUEUE, Opcode::Init, 0, args.as_slice());
    assert_eq!(reply.header.error, -libc::ENOENT);
}

// --- overlapping descriptor chains ----------------------------------------

/// A GETATTR request on the root, as bytes.
fn getattr_request(guest: &mut Guest) -> (InHeader, Vec<u8>) {
    let header = guest.header(Opcode::Getattr as u32, ROOT_ID, size_of::<GetattrIn>());
    let mut request = header.as_slice().to_vec();
    request.extend_from_slice(GetattrIn::default().as_slice());
    (header, request)
}

/// Checks that `addr` holds a successful GETATTR reply of the root for
/// `unique`, `used_len` bytes long.
fn assert_root_attr_reply(guest: &Guest, addr: u64, unique: u64, used_len: u32) {
    let out: OutHeader = guest.mem.read_obj(GuestAddress(addr)).unwrap();
    assert_eq!(out.unique, unique, "reply to another request");
    assert_eq!(out.error, 0, "FUSE error {}", out.error);
    assert_eq!(
        out.len, used_len,
        "used length disagrees with OutHeader.len"
    );
    assert_eq!(used_len, OUT_HEADER + size_of::<AttrOut>() as u32);
    let attr: AttrOut = guest
        .mem
        .read_obj(GuestAddress(addr + u64::from(OUT_HEADER)))
        .unwrap();
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

/// Kicks `queue` and runs the event loop on another thread, so that a
/// device spinning on the queue fails the test instead of hanging it.
fn kick_and_run_or_fail_if_hung(guest: &mut Guest, queue: usize) {
    guest.dev.lock().unwrap().queue_events()[queue]
        .write(1)
        .unwrap();
    let mut manager = std::mem::replace(&mut guest.manager, EventManager::new().unwrap());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..100 {
            if manager.run_with_timeout(0).unwrap() == 0 {
                break;
            }
        }
        let _ = done.send(manager);
    });
    guest.manager = finished
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("device hung (spinning in process_queue) on the queue");
}

#[test]
fn request_and_reply_buffers_overlapping_still_get_the_right_reply() {
    let (_dirs, mut guest) = malformed_guest();
    // The reply descriptor starts at the in-header (full overlap), then at
    // its `unique` field (partial overlap): the reply overwrites the request
    // the server reads.
    for reply_offset in [0u64, 8] {
        let (header, request) = getattr_request(&mut guest);
        let req = guest.buffer(&request);
        guest.alloc(REPLY_CAP); // keep the reply inside our allocation
        let reply = req + reply_offset;
        let used = guest.submit(
            REQUEST_QUEUE,
            &[
                Desc {
                    addr: req,
                    len: request.len() as u32,
                    write: false,
                },
                Desc {
                    addr: reply,
                    len: REPLY_CAP,
                    write: true,
                },
            ],
        );
        assert_eq!(used.id, 0);
        assert_root_attr_reply(&guest, reply, header.unique, used.len);
    }
    let attr = guest.getattr(ROOT_ID);
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn reply_buffer_over_the_descriptor_table_does_not_stop_the_device() {
    let (_dirs, mut guest) = malformed_guest();
    let table = guest.queues[REQUEST_QUEUE].desc_table_addr().0;
    // Chain 0 (descriptors 0, 1) replies over descriptors 2.. of its own
    // table; chain 2 (descriptors 2, 3) is a valid request when offered,
    // garbage once chain 0's reply is written over it.
    let (header, request) = getattr_request(&mut guest);
    let req = guest.buffer(&request);
    let over_table = table + 2 * 16;
    let (_, request2) = getattr_request(&mut guest);
    let req2 = guest.buffer(&request2);
    let reply2 = guest.alloc(REPLY_CAP);
    let before = guest.used_idx(REQUEST_QUEUE);
    guest.submit_raw(
        REQUEST_QUEUE,
        &[
            SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
            SplitDescriptor::new(over_table, 16 * (u32::from(QSIZE) - 2), F_WRITE, 0).into(),
            SplitDescriptor::new(req2, request2.len() as u32, F_NEXT, 3).into(),
            SplitDescriptor::new(reply2, REPLY_CAP, F_WRITE, 0).into(),
        ],
    );
    assert_eq!(guest.used_idx(REQUEST_QUEUE), before.wrapping_add(2));
    let first = guest.take_used(REQUEST_QUEUE).unwrap();
    assert_eq!(first.id, 0);
    assert_root_attr_reply(&guest, over_table, header.unique, first.len);
    // Descriptor 2 now reads as {addr: OutHeader.len, len: unique, flags: 0}:
    // a read-only buffer far shorter than an in-header, given back empty.
    let second = guest.take_used(REQUEST_QUEUE).unwrap();
    assert_eq!((second.id, second.len), (2, 0));

    let attr = guest.getattr(ROOT_ID);
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn reply_buffer_over_the_avail_ring_neither_hangs_nor_kills_the_device() {
    let (_dirs, mut guest) = malformed_guest();
    let avail = guest.queues[REQUEST_QUEUE].avail_addr().0;
    let avail_len = 4 + 2 * u32::from(QSIZE) + 2;
    let (header, request) = getattr_request(&mut guest);
    let req = guest.buffer(&request);
    // The reply's OutHeader.len lands on avail.flags, its high half (0) on
    // avail.idx: the ring then claims 0 - next_avail (≈ 65534) entries.
    guest.queues[REQUEST_QUEUE]
        .add_desc_chains(
            &[
                SplitDescriptor::new(req, request.len() as u32, F_NEXT, 1).into(),
                SplitDescriptor::new(avail, avail_len, F_WRITE, 0).into(),
            ],
            0,
        )
        .unwrap();
    kick_and_run_or_fail_if_hung(&mut guest, REQUEST_QUEUE);
    let used = guest.take_used(REQUEST_QUEUE).expect("chain not returned");
    assert_eq!(used.id, 0);
    assert_root_attr_reply(&guest, avail, header.unique, used.len);
    assert!(guest.dev.lock().unwrap().is_activated());

    // The ring is wrecked by the guest's own doing; a driver would reset.
    assert!(guest.dev.lock().unwrap().reset());
    guest.queues = QUEUE_ADDRS
        .iter()
        .map(|&addr| MockSplitQueue::create(guest.mem, GuestAddress(addr), QSIZE))
        .collect();
    guest.used_seen = [0; NUM_QUEUES];
    guest.activate();
    guest.init();
    let attr = guest.getattr(ROOT_ID);
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}
