//! husk-vmm's virtio-vsock device (virtio spec 5.10) with a
//! Firecracker-style "hybrid" backend: guest vsock streams are bridged to
//! unix sockets on the host.
//!
//! - Host → guest: connect to the device's UDS, send `CONNECT <port>\n`,
//!   read `OK <local port>\n`, then talk.
//! - Guest → host port P: the device connects to `<uds path>_<P>`.
//!
//! Layout: [`device`] is the virtio side (queues, config, event loop),
//! [`muxer`] routes packets and owns the host sockets, [`connection`] is
//! one stream's state machine and credit accounting, [`handshake`] parses
//! the CONNECT line, [`packet`] holds the wire header.

pub mod connection;
pub mod device;
pub mod handshake;
pub mod muxer;
pub mod packet;

pub use device::{Error, Vsock};
pub use muxer::{MuxerError, MAX_CONNECTIONS};
