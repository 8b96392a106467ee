//! The virtio side of the device: feature negotiation, config space,
//! activation, reset, and the event-manager hooks that drain the queues.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{self, CachePolicy, PassthroughFs};
use husk_virtio::{
    device_type, features, warn_limited, ActivateError, GuestMemory, Interrupt, RateLimitedLog,
    VirtioDevice,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{self, ConfigSpace};
use crate::handler::{process_queue, FsServer};

/// Queue 0 carries high-priority requests (FORGET, INTERRUPT), queue 1 the
/// rest (virtio spec 5.11.2). One request queue is enough for a single
/// event thread.
pub const NUM_QUEUES: usize = 2;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Index of the (only) request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 1024;

/// Why a virtio-fs device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("virtio-fs shared directory {path:?} is not accessible: {source}")]
    SharedDirAccess {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs shared directory {path:?} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("virtio-fs shared directory {path:?} must be valid UTF-8 without NUL bytes")]
    UnsupportedPath { path: PathBuf },
    #[error("virtio-fs cannot serve {path:?}: {source}")]
    Passthrough {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs cannot create a queue eventfd: {0}")]
    EventFd(std::io::Error),
}

/// What the device holds between DRIVER_OK and reset.
struct Active {
    mem: GuestMemory,
    interrupt: Interrupt,
    queues: Vec<Queue>,
}

/// A virtio-fs device serving one host directory read-write.
///
/// Requests are served synchronously on the event thread; a budget per
/// wake-up keeps one busy guest from starving the other devices there.
pub struct Fs {
    config: ConfigSpace,
    shared_dir: PathBuf,
    fs_config: passthrough::Config,
    server: FsServer,
    queue_sizes: [u16; NUM_QUEUES],
    queue_events: Vec<EventFd>,
    acked_features: u64,
    active: Option<Active>,
    /// Chains served per wake-up and queue; `None` means the queue size.
    budget: Option<usize>,
    log: RateLimitedLog,
}

impl Fs {
    /// Builds a device that exports `shared_dir` under `tag`.
    ///
    /// The directory is opened here, so an unusable one is a setup error
    /// rather than a guest mount failure later.
    pub fn new(tag: &str, shared_dir: &Path) -> Result<Self, Error> {
        let config = ConfigSpace::new(tag, 1)?;
        let shared_dir = check_shared_dir(shared_dir)?;
        let fs_config = passthrough_config(&shared_dir)?;
        let server = build_server(&shared_dir, &fs_config)?;
        let queue_events = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::EventFd)?;
        Ok(Self {
            config,
            shared_dir,
            fs_config,
            server,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_events,
            acked_features: 0,
            active: None,
            budget: None,
            log: RateLimitedLog::default(),
        })
    }

    /// The directory served, as opened (canonical).
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// True between a successful `activate` and the next `reset`.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Serves what is available on queue `index`, then interrupts the
    /// driver if it asked to be told.
    fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let budget = self.budget.unwrap_or(usize::from(queue.size()));
        let done = match process_queue(&self.server, &active.mem, queue, budget, &mut self.log) {
            Ok(done) => done,
            Err(error) => {
                warn_limited!(self.log, %error, queue = index, "virtio-fs: queue unusable");
                return;
            }
        };
        if done.completed > 0 {
            // Without EVENT_IDX this is always true.
            match queue.needs_notification(&active.mem) {
                Ok(false) => {}
                Ok(true) | Err(_) => {
                    if let Err(error) = active.interrupt.signal_used_queue() {
                        warn_limited!(self.log, %error, "virtio-fs: cannot raise interrupt");
                    }
                }
            }
        }
        if done.more_pending {
            // Come back after the other subscribers had their turn.
            if let Err(error) = self.queue_events[index].write(1) {
                warn_limited!(self.log, %error, "virtio-fs: cannot re-kick queue");
            }
        }
    }
}

/// The shared directory must exist and be a directory; returns it made
/// absolute and free of symlinks so the passthrough root cannot move if the
/// VMM's working directory or a link on the way changes later.
fn check_shared_dir(path: &Path) -> Result<PathBuf, Error> {
    let canonical = path
        .canonicalize()
        .map_err(|source| Error::SharedDirAccess {
            path: path.to_owned(),
            source,
        })?;
    if !canonical.is_dir() {
        return Err(Error::NotADirectory {
            path: path.to_owned(),
        });
    }
    Ok(canonical)
}

/// Options for a directory owned by one guest: the guest may cache what it
/// reads (`Auto`, close-to-open consistency, like virtiofsd's default), no
/// writeback cache (it defers host-visible writes and changes permission
/// semantics). Xattrs pass through: the guest's overlayfs reads
/// `trusted.overlay.opaque` on the image layers the daemon unpacks (an
/// opaque directory has no other representation); the layers themselves
/// are read-only bind mounts, so the guest can only label files in its own
/// pod's folder, which the host never executes.
fn passthrough_config(shared_dir: &Path) -> Result<passthrough::Config, Error> {
    let root_dir = shared_dir
        .to_str()
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| Error::UnsupportedPath {
            path: shared_dir.to_owned(),
        })?;
    Ok(passthrough::Config {
        root_dir: root_dir.to_owned(),
        do_import: true,
        xattr: true,
        writeback: false,
        cache_policy: CachePolicy::Auto,
        ..Default::default()
    })
}

/// Opens the root and wraps it in a FUSE server. Also used by reset, which
/// must forget every inode and handle the old driver knew about.
fn build_server(shared_dir: &Path, cfg: &passthrough::Config) -> Result<FsServer, Error> {
    let passthrough_err = |source| Error::Passthrough {
        path: shared_dir.to_owned(),
        source,
    };
    let fs = PassthroughFs::<()>::new(cfg.clone()).map_err(passthrough_err)?;
    fs.import().map_err(passthrough_err)?;
    Ok(Server::new(Arc::new(fs)))
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        // process_queue honours needs_notification and keeps avail_event
        // current, which is what EVENT_IDX asks of a device.
        features::RING_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The virtio-fs config space is read-only for the driver.
        warn_limited!(
            self.log,
            offset,
            len = data.len(),
            "virtio-fs: driver wrote to read-only config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Interrupt,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        // Kicks that came before DRIVER_OK were dropped; look at the rings
        // once so nothing the driver queued early is stranded.
        for event in &self.queue_events {
            if let Err(error) = event.write(1) {
                warn_limited!(self.log, %error, "virtio-fs: cannot kick queue at activation");
            }
        }
        Ok(())
    }

    /// A real reset: the queues go, and so does every inode and open file
    /// the old driver had, by building a fresh FUSE server on the same
    /// directory (a new driver starts with FUSE_INIT and knows nothing of
    /// them). Fails only if the directory can no longer be opened.
    fn reset(&mut self) -> bool {
        match build_server(&self.shared_dir, &self.fs_config) {
            Ok(server) => {
                self.server = server;
                self.active = None;
                self.acked_features = 0;
                true
            }
            Err(error) => {
                tracing::error!(%error, "virtio-fs: cannot reset");
                false
            }
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.queue_events.iter().enumerate() {
            // Token = queue index; NUM_QUEUES is tiny.
            if let Err(error) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                tracing::error!(%error, queue = index, "virtio-fs: cannot register queue event");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        let Some(event) = self.queue_events.get(index) else {
            warn_limited!(self.log, token = index, "virtio-fs: unexpected event");
            return;
        };
        // Drain the counter first so a kick arriving while we work wakes us
        // again; EAGAIN just means a spurious wake-up.
        let _ = event.read();
        // Before activation there is nothing to serve: ignore the kick.
        self.process_queue(index);
    }
}

#[cfg(test)]
impl Fs {
    /// Lowers the per-wake-up budget so tests can exhaust it.
    pub(crate) fn set_budget(&mut self, budget: usize) {
        self.budget = Some(budget);
    }

    /// The queues, for tests that inspect ring state after activation.
    pub(crate) fn active_queue(&self, index: usize) -> Option<&Queue> {
        self.active.as_ref()?.queues.get(index)
    }
}
