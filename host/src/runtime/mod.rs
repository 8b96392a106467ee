//! The pod and container state machine behind the CRI: what exists, in
//! which state, and the calls that change it. Every change is saved in the
//! [`StateStore`] before it is acknowledged; a restart rebuilds everything
//! from those records and the agents of the VMs still running
//! ([`recovery`]).
//!
//! Locking: the tables are behind one short-held std mutex; each pod has
//! an async mutex that serializes its lifecycle calls (run, stop, remove,
//! container create/remove), so pods proceed in parallel.

mod containers;
mod error;
mod exec;
mod ids;
mod io;
mod lifecycle;
mod monitor;
mod pods;
mod recovery;
mod stats;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use husk_agent_client::AgentClient;

use crate::config::Config;
use crate::image::ImageStore;
use crate::logs::LogWriter;
use crate::state::{ContainerRecord, PodRecord, StateStore};
use crate::vm::{HuskVmm, VmController, VmHandle};

pub use error::{AgentResultExt, Result, RuntimeError};
pub use exec::ExecOutput;
pub use ids::resolve_id;
pub use lifecycle::{LifecycleEvent, LifecycleKind};

/// One pod: its record, its VM while it runs, and its agent once the VM
/// answers.
pub struct Pod {
    pub id: String,
    record: Mutex<PodRecord>,
    /// Serializes the pod's lifecycle calls.
    op: tokio::sync::Mutex<()>,
    agent: Mutex<Option<AgentClient>>,
    vm: Mutex<Option<Arc<VmHandle>>>,
    /// Set (under `record`'s lock) once the record is deleted: nothing may
    /// write it again.
    removed: std::sync::atomic::AtomicBool,
}

impl Pod {
    fn new(record: PodRecord) -> Arc<Pod> {
        Arc::new(Pod {
            id: record.id.clone(),
            record: Mutex::new(record),
            op: tokio::sync::Mutex::new(()),
            removed: std::sync::atomic::AtomicBool::new(false),
            agent: Mutex::new(None),
            vm: Mutex::new(None),
        })
    }

    pub fn record(&self) -> PodRecord {
        self.record.lock().unwrap().clone()
    }

    fn agent(&self) -> Option<AgentClient> {
        self.agent.lock().unwrap().clone()
    }

    fn vm(&self) -> Option<Arc<VmHandle>> {
        self.vm.lock().unwrap().clone()
    }
}

/// One container: its record and, while its output is being copied, the
/// log file (shared with ReopenContainerLog).
pub struct Container {
    pub id: String,
    pub pod_id: String,
    record: Mutex<ContainerRecord>,
    log: Arc<Mutex<Option<LogWriter>>>,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
    last_cpu: Mutex<Option<(i64, u64)>>,
}

impl Container {
    fn new(record: ContainerRecord) -> Arc<Container> {
        Arc::new(Container {
            id: record.id.clone(),
            pod_id: record.pod_id.clone(),
            record: Mutex::new(record),
            log: Arc::new(Mutex::new(None)),
            pump: Mutex::new(None),
            last_cpu: Mutex::new(None),
        })
    }

    pub fn record(&self) -> ContainerRecord {
        self.record.lock().unwrap().clone()
    }
}

impl Drop for Container {
    /// A runtime going away stops copying its containers' output (the next
    /// daemon copies it again from where the agent kept it).
    fn drop(&mut self) {
        if let Some(task) = self.pump.get_mut().unwrap().take() {
            task.abort();
        }
    }
}

#[derive(Default)]
struct Tables {
    pods: HashMap<String, Arc<Pod>>,
    containers: HashMap<String, Arc<Container>>,
}

pub struct Runtime {
    config: Config,
    store: StateStore,
    images: Arc<ImageStore>,
    vms: Arc<dyn VmController>,
    tables: Mutex<Tables>,
    lifecycle: tokio::sync::broadcast::Sender<LifecycleEvent>,
}

impl Runtime {
    /// Opens the state and rebuilds the runtime from it, with pods' VMs
    /// run by husk-vmm: see [`recovery`].
    pub async fn start(config: Config, images: Arc<ImageStore>) -> Result<Arc<Runtime>> {
        let vms = Arc::new(HuskVmm::new(config.vm.vmm.clone()));
        Runtime::start_with(config, images, vms).await
    }

    /// [`start`](Self::start) with another [`VmController`] (tests).
    pub async fn start_with(
        config: Config,
        images: Arc<ImageStore>,
        vms: Arc<dyn VmController>,
    ) -> Result<Arc<Runtime>> {
        let store = StateStore::open(&config.state_dir)?;
        let runtime = Arc::new(Runtime {
            config,
            store,
            images,
            vms,
            tables: Mutex::new(Tables::default()),
            lifecycle: lifecycle::channel(),
        });
        recovery::recover(&runtime).await?;
        Ok(runtime)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.tables.lock().unwrap().pods.values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<Arc<Container>> {
        let tables = self.tables.lock().unwrap();
        tables.containers.values().cloned().collect()
    }

    /// A pod by full id or unique prefix.
    pub fn pod(&self, id: &str) -> Result<Arc<Pod>> {
        let tables = self.tables.lock().unwrap();
        let id = resolve_id(tables.pods.keys(), id, "pod sandbox")?;
        Ok(tables.pods[&id].clone())
    }

    /// A container by full id or unique prefix.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        let tables = self.tables.lock().unwrap();
        let id = resolve_id(tables.containers.keys(), id, "container")?;
        Ok(tables.containers[&id].clone())
    }

    fn pod_containers(&self, pod_id: &str) -> Vec<Arc<Container>> {
        let tables = self.tables.lock().unwrap();
        tables
            .containers
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }

    fn save_pod(&self, pod: &Pod, change: impl FnOnce(&mut PodRecord)) -> Result<PodRecord> {
        let mut record = pod.record.lock().unwrap();
        let mut next = record.clone();
        change(&mut next);
        if pod.removed.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(next);
        }
        self.store.save_pod(&next)?;
        *record = next.clone();
        Ok(next)
    }

    fn save_container(
        &self,
        container: &Container,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord> {
        let mut record = container.record.lock().unwrap();
        let mut next = record.clone();
        change(&mut next);
        self.store.save_container(&next)?;
        *record = next.clone();
        Ok(next)
    }
}

/// Nanoseconds since the epoch, the CRI's timestamps.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
