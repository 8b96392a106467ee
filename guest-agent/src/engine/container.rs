//! One container: its spec, folder, cgroup, init process and execs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use husk_proto::agent::v1 as pb;
use husk_proto::MAX_EXECS;
use oci_spec::runtime::Spec;

use super::cgroups::Cgroup;
use super::error::EngineError;
use super::launch::{PidNamespace, StartGate};
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
    pub execs: Mutex<Execs>,
    pub created_at_ns: i64,
    pub started_at_ns: AtomicI64,
}

/// The container's exec'd processes, and the ids of those still starting
/// (taken, so two ExecProcess calls cannot both use one id).
#[derive(Default)]
pub struct Execs {
    running: HashMap<String, Arc<TrackedProcess>>,
    starting: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Container {
    pub fn state(&self) -> pb::ContainerState {
        if self.init.exit_status().is_some() {
            pb::ContainerState::Stopped
        } else if self.started_at_ns.load(Ordering::Acquire) != 0 {
            pb::ContainerState::Running
        } else {
            pb::ContainerState::Created
        }
    }

    pub fn take_gate(&self) -> Option<StartGate> {
        lock(&self.gate).take()
    }

    pub fn exec(&self, exec_id: &str) -> Option<Arc<TrackedProcess>> {
        lock(&self.execs).running.get(exec_id).cloned()
    }

    /// Takes `exec_id` for a process about to start.
    pub fn reserve_exec(&self, exec_id: &str) -> Result<(), EngineError> {
        let mut execs = lock(&self.execs);
        if execs.running.contains_key(exec_id) || execs.starting.contains(exec_id) {
            return Err(EngineError::Exists(format!("{}/{exec_id}", self.id)));
        }
        if execs.running.len() + execs.starting.len() >= MAX_EXECS {
            return Err(EngineError::TooMany("execs", MAX_EXECS));
        }
        execs.starting.insert(exec_id.to_owned());
        Ok(())
    }

    /// Ends a reservation: the process is tracked from now on, or (None)
    /// it failed to start and the id is free again.
    pub fn finish_exec(&self, exec_id: &str, started: Option<Arc<TrackedProcess>>) {
        let mut execs = lock(&self.execs);
        execs.starting.remove(exec_id);
        if let Some(process) = started {
            execs.running.insert(exec_id.to_owned(), process);
        }
    }

    /// Forgets an exec whose exit was reported, if it is still `process`.
    pub fn forget_exec(&self, exec_id: &str, process: &Arc<TrackedProcess>) {
        let mut execs = lock(&self.execs);
        if execs
            .running
            .get(exec_id)
            .is_some_and(|p| Arc::ptr_eq(p, process))
        {
            execs.running.remove(exec_id);
        }
    }

    /// Whether the spec gives the container a pid namespace of its own
    /// (or joins one): then execs must be born in it.
    pub fn has_pid_namespace(&self) -> bool {
        !matches!(super::pid_namespace(&self.spec), PidNamespace::Same)
    }

    pub fn status(&self) -> pb::ContainerStatus {
        let mut exec_ids: Vec<String> = lock(&self.execs).running.keys().cloned().collect();
        exec_ids.sort();
        pb::ContainerStatus {
            container_id: self.id.clone(),
            state: self.state() as i32,
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
