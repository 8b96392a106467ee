//! How a device raises its interrupt: set a bit in the transport's
//! InterruptStatus register, then kick the irqfd KVM injects the GSI from.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Bits of the virtio-mmio InterruptStatus register.
pub mod status_bits {
    /// A used ring was updated.
    pub const USED_RING: u32 = 0x1;
    /// The device configuration changed.
    pub const CONFIG_CHANGE: u32 = 0x2;
}

/// Shared InterruptStatus register value.
pub type InterruptStatus = Arc<AtomicU32>;

/// A device's interrupt line, cheap to clone.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: InterruptStatus,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(status: InterruptStatus, irqfd: Arc<EventFd>) -> Self {
        Self { status, irqfd }
    }

    /// Tells the driver a used ring moved.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(status_bits::USED_RING)
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(status_bits::CONFIG_CHANGE)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Current InterruptStatus (for tests and the transport).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_sets_the_bit_and_kicks_the_eventfd() {
        let irqfd = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        let status = InterruptStatus::default();
        let interrupt = Interrupt::new(status.clone(), irqfd.clone());
        interrupt.signal_used_queue().unwrap();
        interrupt.signal_config_change().unwrap();
        assert_eq!(status.load(Ordering::SeqCst), 0x3);
        assert_eq!(irqfd.read().unwrap(), 2);
    }
}
