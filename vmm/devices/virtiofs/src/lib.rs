//! husk-vmm's virtio-fs device (virtio spec 5.11): one host directory,
//! served read-write to the guest through `fuse-backend-rs`'s passthrough
//! file system.
//!
//! - [`config`]: the read-only config space (tag, request queue count).
//! - [`handler`]: descriptor chains in, FUSE replies out, untrusted input
//!   handled without panicking.
//! - [`device`]: the [`husk_virtio::VirtioDevice`] and event-manager glue.
//!
//! Confinement: the passthrough file system resolves every name relative
//! to its parent directory's `O_PATH` fd with `O_NOFOLLOW`, rejects names
//! containing `/`, maps `..` of the root onto the root itself, and returns
//! symlinks to the guest unresolved, so the guest's kernel resolves them
//! inside its own view of the share. The host directory is the ceiling.

pub mod config;
pub mod device;
pub mod handler;

pub use config::{ConfigSpace, TAG_MAX_LEN};
pub use device::{Error, Fs, NUM_QUEUES, QUEUE_SIZE};

#[cfg(test)]
mod tests;
