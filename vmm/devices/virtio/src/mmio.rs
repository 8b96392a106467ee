//! The virtio-mmio transport, version 2 (virtio spec 4.2): the register
//! window the guest driver reads and writes to discover a device, negotiate
//! features, describe its queues and start it.
//!
//! Everything here is driven by guest writes, so every value is checked and
//! a bad one is logged (rate-limited) and ignored; the device then simply
//! does not start, which is what a real device does with a confused driver.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::InterruptStatus;
use crate::ratelimit::RateLimitedLog;
use crate::{features, warn_limited, GuestMemory, Interrupt, VirtioDevice};

/// Bytes of guest-physical address space each transport occupies.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

/// Register offsets (virtio spec 4.2.2).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio spec 2.1).
#[cfg_attr(not(test), allow(dead_code))]
mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// One virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    irqfd: Arc<EventFd>,
    interrupt_status: InterruptStatus,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
    log: RateLimitedLog,
}

impl MmioTransport {
    /// Wraps `device`; `irqfd` is the eventfd KVM turns into this
    /// transport's interrupt line.
    pub fn new(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irqfd: Arc<EventFd>,
    ) -> Self {
        let queues = fresh_queues(&*lock(&device));
        Self {
            device,
            mem,
            irqfd,
            interrupt_status: InterruptStatus::default(),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            log: RateLimitedLog::default(),
        }
    }

    /// The guest-physical offset of QueueNotify, where the VMM registers
    /// each queue's ioeventfd (datamatch = queue index).
    pub const fn queue_notify_offset() -> u64 {
        reg::QUEUE_NOTIFY
    }

    /// Handles a guest read of `data.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!(
                self.log,
                offset,
                len = data.len(),
                "virtio-mmio: unaligned register read"
            );
            return;
        }
        let value = match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => lock(&self.device).device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features() | features::VERSION_1;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn_limited!(self.log, offset, "virtio-mmio: read of an unknown register");
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::DRIVER != 0 && !self.needs_reset() {
                lock(&self.device).write_config(offset - reg::CONFIG, data);
            } else {
                warn_limited!(self.log, offset, "virtio-mmio: config write before DRIVER");
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_limited!(
                self.log,
                offset,
                len = data.len(),
                "virtio-mmio: register write not 4 bytes"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn_limited!(self.log, offset, "virtio-mmio: unaligned register write");
            return;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => self.set_queue_size(value),
            reg::QUEUE_READY => self.with_queue_setup(|q| q.set_ready(value == 1)),
            reg::QUEUE_DESC_LOW => {
                self.with_queue_setup(|q| q.set_desc_table_address(Some(value), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.with_queue_setup(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.with_queue_setup(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue_setup(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.with_queue_setup(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.with_queue_setup(|q| q.set_used_ring_address(None, Some(value)))
            }
            // Notifications normally arrive through ioeventfds and never
            // reach here; if one does (no ioeventfd), kick the queue's fd.
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(value),
            _ => warn_limited!(
                self.log,
                offset,
                value,
                "virtio-mmio: write to a read-only or unknown register"
            ),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn needs_reset(&self) -> bool {
        self.status & status::NEEDS_RESET != 0
    }

    /// Queue registers may only change while the driver sets the device up
    /// (FEATURES_OK set, DRIVER_OK not yet).
    fn with_queue_setup(&mut self, f: impl FnOnce(&mut Queue)) {
        let setting_up = self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK;
        match self.queues.get_mut(self.queue_select as usize) {
            Some(queue) if setting_up => f(queue),
            Some(_) => warn_limited!(
                self.log,
                status = self.status,
                "virtio-mmio: queue write outside setup"
            ),
            None => warn_limited!(
                self.log,
                queue = self.queue_select,
                "virtio-mmio: queue select out of range"
            ),
        }
    }

    fn set_queue_size(&mut self, value: u32) {
        let mut result = Ok(());
        self.with_queue_setup(|q| {
            result = u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| q.try_set_size(size));
        });
        if let Err(error) = result {
            warn_limited!(self.log, value, %error, "virtio-mmio: bad queue size; device needs reset");
            self.status |= status::NEEDS_RESET;
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            warn_limited!(
                self.log,
                status = self.status,
                "virtio-mmio: features written outside negotiation"
            );
            return;
        }
        let offered = lock(&self.device).avail_features() | features::VERSION_1;
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        let requested = u64::from(value) << shift;
        if requested & !offered != 0 {
            warn_limited!(
                self.log,
                requested,
                offered,
                "virtio-mmio: driver acked features we did not offer"
            );
        }
        self.acked_features = (self.acked_features & !mask) | (requested & offered);
    }

    fn notify_queue(&mut self, index: u32) {
        let device = lock(&self.device);
        match device.queue_events().get(index as usize) {
            Some(event) => {
                if let Err(error) = event.write(1) {
                    warn_limited!(self.log, %error, "virtio-mmio: cannot kick queue event");
                }
            }
            None => warn_limited!(
                self.log,
                index,
                "virtio-mmio: notify for a queue that does not exist"
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, one step at a time (spec 3.1.1).
        if value & self.status != self.status {
            warn_limited!(
                self.log,
                old = self.status,
                new = value,
                "virtio-mmio: status bits cleared without reset"
            );
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 {
            if self.acked_features & features::VERSION_1 == 0 {
                // We only speak virtio 1.x; refuse legacy drivers.
                warn_limited!(self.log, "virtio-mmio: driver did not accept VERSION_1");
                self.status = value & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).set_acked_features(self.acked_features);
            let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
            for queue in &mut self.queues {
                queue.set_event_idx(event_idx);
            }
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && !self.activated && !self.needs_reset() {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if let Some(index) = self.queues.iter().position(|q| !q.ready()) {
            warn_limited!(
                self.log,
                index,
                "virtio-mmio: DRIVER_OK with a queue not ready"
            );
            self.status |= status::NEEDS_RESET;
            return;
        }
        if let Some(index) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            warn_limited!(
                self.log,
                index,
                "virtio-mmio: queue rings lie outside guest memory or are misaligned"
            );
            self.status |= status::NEEDS_RESET;
            return;
        }
        let interrupt = Interrupt::new(self.interrupt_status.clone(), self.irqfd.clone());
        // The device owns the queues from now on; a reset builds new ones.
        let queues = std::mem::take(&mut self.queues);
        match lock(&self.device).activate(self.mem.clone(), interrupt, queues) {
            Ok(()) => self.activated = true,
            Err(error) => {
                warn_limited!(self.log, %error, "virtio-mmio: device failed to activate");
                self.status |= status::NEEDS_RESET;
            }
        }
    }

    fn reset(&mut self) {
        if self.activated && !lock(&self.device).reset() {
            warn_limited!(self.log, "virtio-mmio: device cannot be reset");
            self.status |= status::NEEDS_RESET;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.queues = fresh_queues(&*lock(&self.device));
    }

    /// True once the device runs (for tests and diagnostics).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The status register (for tests and diagnostics).
    pub fn status(&self) -> u32 {
        self.status
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        // A zero or non-power-of-two maximum is a bug in our device model,
        // not something a guest can cause.
        .map(|&max| Queue::new(max).expect("device declares a valid queue size"))
        .collect()
}

/// A poisoned device lock means a device thread panicked; keep serving the
/// other devices rather than cascading the panic into the vCPU thread.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
