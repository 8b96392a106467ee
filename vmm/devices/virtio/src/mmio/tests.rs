use super::*;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

/// A device with two queues that records what the transport told it.
struct Recorder {
    queue_events: Vec<EventFd>,
    acked: u64,
    activated_with: Option<usize>,
    config: [u8; 8],
    resets: u32,
}

impl Recorder {
    fn new() -> Self {
        Self {
            queue_events: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            acked: 0,
            activated_with: None,
            config: *b"husk-cfg",
            resets: 0,
        }
    }
}

impl MutEventSubscriber for Recorder {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
    fn init(&mut self, _ops: &mut EventOps) {}
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        crate::device_type::VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
    fn avail_features(&self) -> u64 {
        features::RING_EVENT_IDX | 1
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Some(src) = self.config.get(offset as usize..) else {
            return;
        };
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemory,
        _i: Interrupt,
        queues: Vec<Queue>,
    ) -> Result<(), crate::ActivateError> {
        self.activated_with = Some(queues.len());
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.resets += 1;
        self.activated_with = None;
        true
    }
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn transport() -> (MmioTransport, Arc<Mutex<Recorder>>) {
    let device = Arc::new(Mutex::new(Recorder::new()));
    let irqfd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let dynamic: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    (MmioTransport::new(memory(), dynamic, irqfd), device)
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Drives the driver side of initialisation (spec 3.1.1) with queues laid
/// out at `base` + 0x1000 * index.
fn bring_up(t: &mut MmioTransport, base: u64) {
    write32(t, reg::STATUS, status::ACKNOWLEDGE);
    write32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(t, reg::DRIVER_FEATURES_SEL, 0);
    write32(t, reg::DRIVER_FEATURES, 1 | features::RING_EVENT_IDX as u32);
    write32(t, reg::DRIVER_FEATURES_SEL, 1);
    write32(t, reg::DRIVER_FEATURES, 1); // VERSION_1
    write32(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for index in 0..2u32 {
        let addr = base + 0x1000 * u64::from(index);
        write32(t, reg::QUEUE_SEL, index);
        write32(t, reg::QUEUE_NUM, 16);
        write32(t, reg::QUEUE_DESC_LOW, addr as u32);
        write32(t, reg::QUEUE_DESC_HIGH, (addr >> 32) as u32);
        write32(t, reg::QUEUE_DRIVER_LOW, (addr + 0x200) as u32);
        write32(t, reg::QUEUE_DRIVER_HIGH, 0);
        write32(t, reg::QUEUE_DEVICE_LOW, (addr + 0x400) as u32);
        write32(t, reg::QUEUE_DEVICE_HIGH, 0);
        write32(t, reg::QUEUE_READY, 1);
    }
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    write32(t, reg::STATUS, all);
}

#[test]
fn identifies_itself_as_a_version_2_device() {
    let (mut t, _) = transport();
    assert_eq!(read32(&mut t, reg::MAGIC), MAGIC_VALUE);
    assert_eq!(read32(&mut t, reg::VERSION), 2);
    assert_eq!(read32(&mut t, reg::DEVICE_ID), crate::device_type::VSOCK);
    write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read32(&mut t, reg::DEVICE_FEATURES),
        1,
        "VERSION_1 is always offered"
    );
    write32(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 16);
    write32(&mut t, reg::QUEUE_SEL, 7);
    assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 0);
}

#[test]
fn full_handshake_activates_the_device_with_every_queue() {
    let (mut t, device) = transport();
    bring_up(&mut t, 0x1_0000);
    assert!(t.is_activated());
    let device = device.lock().unwrap();
    assert_eq!(device.activated_with, Some(2));
    assert_eq!(
        device.acked,
        features::VERSION_1 | features::RING_EVENT_IDX | 1
    );
}

#[test]
fn queues_outside_guest_memory_are_refused_without_activation() {
    let (mut t, device) = transport();
    bring_up(&mut t, 0xfff_f000_0000);
    assert!(!t.is_activated());
    assert!(device.lock().unwrap().activated_with.is_none());
    assert_ne!(t.status() & status::NEEDS_RESET, 0);
}

#[test]
fn bad_queue_sizes_leave_the_queue_invalid() {
    let (mut t, device) = transport();
    write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    write32(&mut t, reg::DRIVER_FEATURES, 1);
    write32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for index in 0..2 {
        write32(&mut t, reg::QUEUE_SEL, index);
        write32(&mut t, reg::QUEUE_NUM, 17 + 1000 * index); // not a power of two, or too big
        write32(&mut t, reg::QUEUE_READY, 1);
    }
    write32(&mut t, reg::STATUS, 0xf);
    assert!(!t.is_activated());
    assert!(device.lock().unwrap().activated_with.is_none());
}

#[test]
fn legacy_drivers_without_version_1_cannot_set_features_ok() {
    let (mut t, _) = transport();
    write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(&mut t, reg::DRIVER_FEATURES, 1);
    write32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(read32(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn features_we_did_not_offer_are_dropped() {
    let (mut t, device) = transport();
    write32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
    write32(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    write32(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
    write32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        device.lock().unwrap().acked,
        features::VERSION_1 | features::RING_EVENT_IDX | 1
    );
}

#[test]
fn garbage_writes_anywhere_never_panic_or_activate() {
    let (mut t, device) = transport();
    let mut seed = 0x1234_5678_u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = seed % 0x200;
        let len = [1usize, 2, 3, 4, 8][(seed >> 20) as usize % 5];
        let bytes = (seed >> 8).to_le_bytes();
        if seed & 1 == 0 {
            t.write(offset, &bytes[..len]);
        } else {
            let mut out = vec![0u8; len];
            t.read(offset, &mut out);
        }
    }
    // Whatever state the noise left, no activation may have used an
    // unvalidated queue: activation implies every queue was valid.
    let activated_with = device.lock().unwrap().activated_with;
    if let Some(n) = activated_with {
        assert_eq!(n, 2);
    }
}

#[test]
fn status_zero_resets_the_device_and_the_transport() {
    let (mut t, device) = transport();
    bring_up(&mut t, 0x1_0000);
    t.interrupt_status.store(1, Ordering::SeqCst);
    write32(&mut t, reg::STATUS, 0);
    assert_eq!(read32(&mut t, reg::STATUS), 0);
    assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 0);
    assert!(!t.is_activated());
    assert_eq!(device.lock().unwrap().resets, 1);
    bring_up(&mut t, 0x1_0000);
    assert!(t.is_activated());
}

#[test]
fn interrupt_ack_clears_only_acked_bits() {
    let (mut t, _) = transport();
    t.interrupt_status.store(3, Ordering::SeqCst);
    write32(&mut t, reg::INTERRUPT_ACK, 1);
    assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), 2);
}

#[test]
fn config_space_reads_go_to_the_device_and_past_its_end_read_zero() {
    let (mut t, _) = transport();
    let mut data = [0xffu8; 4];
    t.read(reg::CONFIG + 4, &mut data);
    assert_eq!(&data, b"-cfg");
    t.read(reg::CONFIG + 6, &mut data);
    assert_eq!(&data, b"fg\0\0");
    t.read(reg::CONFIG + 0x800, &mut data);
    assert_eq!(data, [0; 4]);
}

#[test]
fn notify_without_ioeventfd_kicks_the_queue_event() {
    let (mut t, device) = transport();
    write32(&mut t, reg::QUEUE_NOTIFY, 1);
    write32(&mut t, reg::QUEUE_NOTIFY, 9);
    assert_eq!(device.lock().unwrap().queue_events[1].read().unwrap(), 1);
}
