//! The virtio side of husk-vmm: the contract a device model implements
//! ([`VirtioDevice`]), how it raises interrupts ([`Interrupt`]) and the
//! virtio-mmio transport ([`MmioTransport`]) that the guest driver talks to.
//!
//! Device models (vsock, virtio-fs) live in their own crates and depend only
//! on this one, so each can be unit-tested against a real `GuestMemoryMmap`
//! without KVM.

mod device;
mod interrupt;
mod mmio;
mod ratelimit;

pub use device::{ActivateError, VirtioDevice};
pub use interrupt::{Interrupt, InterruptStatus};
pub use mmio::{MmioTransport, MMIO_WINDOW_SIZE};
pub use ratelimit::RateLimitedLog;

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Device ids from the virtio spec (5 "Device Types").
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const VSOCK: u32 = 19;
    pub const FS: u32 = 26;
}

/// Feature bits common to all devices (virtio spec 6).
pub mod features {
    pub const VERSION_1: u64 = 1 << 32;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
}
