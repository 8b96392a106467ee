//! Lifecycle events of pods and containers for CRI GetContainerEvents
//! (kubelet's evented PLEG): a broadcast each change is sent to once it is
//! recorded. Subscribers that fall behind lose events and relist, as the
//! CRI allows.

use tokio::sync::broadcast;

use super::now_ns;

/// How many events a slow subscriber may fall behind.
pub const EVENT_BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One change. For a pod's own events `id` is the pod's id (what kubelet
/// expects for sandbox events).
#[derive(Debug, Clone)]
pub struct LifecycleEvent {
    pub id: String,
    pub pod_id: String,
    pub kind: LifecycleKind,
    pub at_ns: i64,
}

pub fn channel() -> broadcast::Sender<LifecycleEvent> {
    broadcast::channel(EVENT_BACKLOG).0
}

impl super::Runtime {
    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.lifecycle.subscribe()
    }

    pub(super) fn emit(&self, id: &str, pod_id: &str, kind: LifecycleKind) {
        // No subscriber is not an error.
        let _ = self.lifecycle.send(LifecycleEvent {
            id: id.to_string(),
            pod_id: pod_id.to_string(),
            kind,
            at_ns: now_ns(),
        });
    }
}
