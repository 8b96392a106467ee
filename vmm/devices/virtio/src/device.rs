//! What a virtio device model must provide to be put behind a transport.

use event_manager::MutEventSubscriber;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::{GuestMemory, Interrupt};

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, the driver made {got} ready")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already active")]
    AlreadyActive,
    #[error("{0}")]
    Device(String),
}

/// A virtio device model.
///
/// Threads: the transport calls the configuration methods from a vCPU
/// thread (guest MMIO), while queue work happens on the VMM's event thread
/// through [`MutEventSubscriber`]. Both hold the same `Mutex` around the
/// device, so a device never sees the two at once.
///
/// Queue notifications: the device owns one [`EventFd`] per queue
/// ([`VirtioDevice::queue_events`]), created when the device is built. The
/// VMM registers them with KVM as ioeventfds on the transport's QueueNotify
/// register, so a guest kick never leaves the kernel; the device registers
/// the same fds with the event manager in `init` and ignores them until it
/// has been activated.
pub trait VirtioDevice: MutEventSubscriber + Send {
    /// Virtio device id (see [`crate::device_type`]).
    fn device_type(&self) -> u32;

    /// Largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// One eventfd per queue, in queue order.
    fn queue_events(&self) -> &[EventFd];

    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;

    /// Records the features the driver accepted (a subset of
    /// `avail_features`; the transport has already masked it).
    fn set_acked_features(&mut self, features: u64);

    /// Reads device configuration space at `offset`. Out-of-range bytes are
    /// left untouched (the transport pre-fills them with zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device configuration space; devices with a read-only config
    /// ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device once the driver set DRIVER_OK. `queues` are the
    /// ready queues in index order, already checked against guest memory.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Interrupt,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;

    /// Returns the device to its pre-activation state when the driver
    /// writes 0 to Status. Returns false if the device cannot be reset, in
    /// which case the transport marks it as needing a reset.
    fn reset(&mut self) -> bool {
        false
    }
}
