//! One container: its spec, folder, cgroup, init process and execs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use husk_proto::agent::v1 as pb;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::cgroups::Cgroup;
use super::launch::StartGate;
use super::process::TrackedProcess;

pub struct Container {
    pub id: String,
    pub spec: Spec,
    /// `<root>/containers/<id>`: rootfs mount point, upper and work dirs.
    pub dir: PathBuf,
    pub cgroup: Arc<Cgroup>,
    pub init: Arc<TrackedProcess>,
    /// Present until StartContainer opens it.
    pub gate: Mutex<Option<StartGate>>,
    pub execs: Mutex<HashMap<String, Arc<TrackedProcess>>>,
    pub created_at_ns: i64,
    pub started_at_ns: AtomicI64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Container {
    pub fn status(&self) -> pb::ContainerStatus {
        if self.init.exit_status().is_some() {
            pb::ContainerStatus::Stopped
        } else if self.started_at_ns.load(Ordering::Acquire) != 0 {
            pb::ContainerStatus::Running
        } else {
            pb::ContainerStatus::Created
        }
    }

    pub fn take_gate(&self) -> Option<StartGate> {
        lock(&self.gate).take()
    }

    pub fn exec(&self, exec_id: &str) -> Option<Arc<TrackedProcess>> {
        lock(&self.execs).get(exec_id).cloned()
    }

    pub fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<TrackedProcess>>> {
        lock(&self.execs)
    }

    /// Whether the spec gives the container a pid namespace of its own
    /// (or joins one): then execs must be born in it.
    pub fn has_pid_namespace(&self) -> bool {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid))
    }

    pub fn state(&self) -> pb::ContainerState {
        let mut exec_ids: Vec<String> = self.execs().keys().cloned().collect();
        exec_ids.sort();
        pb::ContainerState {
            container_id: self.id.clone(),
            status: self.status() as i32,
            pid: self.init.pid,
            created_at_ns: self.created_at_ns,
            started_at_ns: self.started_at_ns.load(Ordering::Acquire),
            exit: self.init.exit_status(),
            exec_ids,
            annotations: self
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }
}
