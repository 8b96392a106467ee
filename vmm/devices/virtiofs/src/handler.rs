//! Turns descriptor chains into FUSE requests for `fuse-backend-rs` and puts
//! them back on the used ring.
//!
//! Every chain comes from the guest and is untrusted: a chain the transport
//! layer cannot map, or a request the FUSE server rejects, is logged
//! (rate-limited) and completed with whatever reply was written (often 0
//! bytes), so the driver gets its buffer back and the device keeps serving.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use husk_virtio::{warn_limited, GuestMemory, RateLimitedLog};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

/// The FUSE server the device hands requests to.
pub type FsServer = Server<Arc<PassthroughFs>>;

/// Why one request could not be served; logged, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot map the device-readable part of the chain: {0}")]
    Reader(fuse_backend_rs::transport::Error),
    #[error("cannot map the device-writable part of the chain: {0}")]
    Writer(fuse_backend_rs::transport::Error),
    #[error("FUSE request failed: {0}")]
    Fuse(fuse_backend_rs::Error),
    #[error("FUSE server panicked on the request")]
    Panic,
}

/// Why a whole queue could not be processed (the rings themselves are
/// unusable); the caller logs it and waits for the next kick.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot read the available ring: {0}")]
    Avail(virtio_queue::Error),
    #[error("cannot update the used ring: {0}")]
    Used(virtio_queue::Error),
}

/// What one pass over a queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Chains returned to the used ring.
    pub completed: usize,
    /// True if the budget ran out with chains still available.
    pub more_pending: bool,
}

/// Serves up to `budget` chains from `queue`.
///
/// Uses the disable/enable notification dance so that with EVENT_IDX the
/// driver's kick threshold (`avail_event`) follows our progress and a chain
/// added while we were busy is never missed.
pub fn process_queue(
    server: &FsServer,
    mem: &GuestMemory,
    queue: &mut Queue,
    budget: usize,
    log: &mut RateLimitedLog,
) -> Result<Processed, QueueError> {
    let mut done = Processed::default();
    loop {
        queue.disable_notification(mem).map_err(QueueError::Avail)?;
        while done.completed < budget {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // `None` also means "the driver's avail index is impossible"
                // (more entries than the queue holds). Tell that apart from
                // an empty ring, or the enable_notification check below,
                // which sees entries pending, would send us round forever.
                queue.iter(mem).map_err(QueueError::Avail)?;
                break;
            };
            let head = chain.head_index();
            let len = match serve_chain(server, mem, chain) {
                Ok(len) => len,
                Err(error) => {
                    warn_limited!(log, %error, head, "virtio-fs: bad request");
                    0
                }
            };
            // A reply cannot exceed the writable buffers, which the writer
            // bounds by u32 descriptor lengths; saturate rather than trust it.
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            queue.add_used(mem, head, len).map_err(QueueError::Used)?;
            done.completed += 1;
        }
        if done.completed >= budget {
            // Leave notifications off: the caller re-kicks us instead.
            done.more_pending = true;
            return Ok(done);
        }
        if !queue.enable_notification(mem).map_err(QueueError::Avail)? {
            return Ok(done);
        }
    }
}

/// Runs one FUSE request; returns the bytes of reply written to the chain.
fn serve_chain(
    server: &FsServer,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<usize, RequestError> {
    let reader = Reader::from_descriptor_chain(mem, chain.clone()).map_err(RequestError::Reader)?;
    let writer = VirtioFsWriter::new(mem, chain).map_err(RequestError::Writer)?;
    // fuse-backend-rs is hardened against malformed messages, but a panic
    // there must not take the whole VMM (and every other device) down with
    // it: the request fails, the guest gets its buffer back.
    catch_unwind(AssertUnwindSafe(|| {
        server.handle_message(reader, writer.into(), None, None)
    }))
    .map_err(|_| RequestError::Panic)?
    .map_err(RequestError::Fuse)
}
