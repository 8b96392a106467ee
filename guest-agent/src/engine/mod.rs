//! The container engine: runs OCI containers as the agent's children.
//!
//! Written here rather than using libcontainer (youki): libcontainer waits
//! for its own intermediate processes with `waitpid`, which races the
//! agent's PID 1 reaper (`waitpid(-1)`), and it links the C libseccomp into
//! what must be a static PID 1. Our engine spawns every process through
//! [`crate::reaper::Reaper`], so exits are collected in exactly one place.
//!
//! Flow: [`spec`] checks the request; [`launch`] spawns the agent binary
//! again as the container init ([`init`]) in a new pid namespace and the
//! container's cgroup ([`cgroups`]); the init enters its namespaces, builds
//! the rootfs ([`rootfs`]), takes on the process's identity and seccomp
//! filter ([`seccomp`]), reports `ok` and execs on StartContainer.

pub mod cgroups;
mod container;
mod error;
pub mod init;
mod launch;
mod process;
mod processes;
mod resources;
pub mod rootfs;
pub mod seccomp;
mod spec;
mod stdio;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use husk_proto::agent::v1 as pb;
use husk_proto::MAX_CONTAINERS;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tokio::sync::broadcast;

use self::cgroups::CgroupManager;
use self::container::Container;
pub use self::error::EngineError;
use self::init::protocol::{InitConfig, InitMode};
use self::launch::{launch, PidNamespace};
pub use self::process::now_ns;
use self::process::{ExitContext, TrackedProcess};
pub use self::spec::check_sysctl;
use crate::reaper::Reaper;

/// How long the agent's shutdown lets containers handle SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long Delete waits for a killed container's init to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where things live.
pub struct EngineConfig {
    /// The agent's state folder; containers go to `<root>/containers/<id>`.
    pub root: PathBuf,
    /// Image layers are folders under it (the shared folder in a VM).
    pub layer_root: PathBuf,
    /// Bind mount sources must lie under one of these.
    pub allowed_mount_roots: Vec<PathBuf>,
}

pub struct Engine {
    reaper: Reaper,
    config: EngineConfig,
    cgroups: Result<Arc<CgroupManager>, String>,
    containers: Mutex<Table>,
    events: broadcast::Sender<pb::Event>,
}

#[derive(Default)]
struct Table {
    ready: HashMap<String, Arc<Container>>,
    /// Ids being created or deleted: taken, but not usable yet.
    busy: HashSet<String>,
}

impl Engine {
    pub fn new(reaper: Reaper, config: EngineConfig) -> Self {
        // The guest's only agent owns `husk`; outside a VM several agents
        // may share a host, so each gets its own (removed when it stops).
        const HOST_BASE_PREFIX: &str = "husk-agent-";
        let in_vm = std::process::id() == 1;
        let base = if in_vm {
            "husk".to_owned()
        } else {
            format!("{HOST_BASE_PREFIX}{}", std::process::id())
        };
        let cgroups = CgroupManager::detect(&base)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let (Ok(manager), false) = (&cgroups, in_vm) {
            // Only outside a VM can another agent have left a base behind.
            manager.sweep_stale(HOST_BASE_PREFIX);
        }
        match &cgroups {
            Ok(m) if m.version() == cgroups::CgroupVersion::V1 => eprintln!(
                "husk-agent: WARNING: cgroup v1 host: container limits use the v1 \
                 controllers (memory.limit_in_bytes, cpu.cfs_quota_us, pids.max); \
                 inside a husk microVM they are cgroup v2"
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("husk-agent: WARNING: no usable cgroups, containers cannot run: {e}")
            }
        }
        let (events, _) = broadcast::channel(1024);
        Self {
            reaper,
            config,
            cgroups,
            containers: Mutex::default(),
            events,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, EngineError> {
        self.table()
            .ready
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoContainer(id.to_owned()))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<TrackedProcess>, EngineError> {
        let container = self.get(id)?;
        if exec_id.is_empty() {
            return Ok(container.init.clone());
        }
        container
            .exec(exec_id)
            .ok_or_else(|| EngineError::NoExec(id.to_owned(), exec_id.to_owned()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    pub fn count(&self) -> usize {
        self.table().ready.len()
    }

    /// CreateContainer: checks everything, then builds the container; a
    /// failure removes whatever was built.
    pub async fn create(&self, request: pb::CreateContainerRequest) -> Result<u32, EngineError> {
        let id = request.container_id;
        spec::check_id("container_id", &id)?;
        let spec = spec::parse_spec(&request.oci_spec_json)?;
        let lower = spec::resolve_layers(&self.config.layer_root, &request.layers)?;
        rootfs::validate(&spec, &self.config.allowed_mount_roots)?;
        if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            // Logged here once; the init compiles again silently (its
            // stderr is the container's).
            for warning in seccomp::compile(seccomp)?.warnings() {
                eprintln!("husk-agent: container {id}: {warning}");
            }
        }
        let manager = self.cgroups.clone().map_err(EngineError::NoCgroups)?;
        {
            let mut table = self.table();
            if table.ready.contains_key(&id) || table.busy.contains(&id) {
                return Err(EngineError::Exists(id));
            }
            if table.ready.len() + table.busy.len() >= MAX_CONTAINERS {
                return Err(EngineError::TooMany("containers", MAX_CONTAINERS));
            }
            table.busy.insert(id.clone());
        }
        let result = self.build(&id, spec, lower, request.stdin, manager).await;
        let mut table = self.table();
        table.busy.remove(&id);
        let container = result?;
        let pid = container.init.pid;
        table.ready.insert(id, container);
        Ok(pid)
    }

    async fn build(
        &self,
        id: &str,
        spec: Spec,
        lower: Vec<PathBuf>,
        stdin: bool,
        manager: Arc<CgroupManager>,
    ) -> Result<Arc<Container>, EngineError> {
        let dir = self.config.root.join("containers").join(id);
        let process = spec.process().clone().unwrap_or_default();
        let terminal = process.terminal().unwrap_or(false);
        let pid_ns = pid_namespace(&spec);
        let reaper = self.reaper.clone();
        let id_owned = id.to_owned();
        let dir_owned = dir.clone();
        let spec_owned = spec.clone();
        // Canonical, as the init compares them with resolved paths; a root
        // that does not exist yet holds nothing to bind anyway.
        let bind_roots: Vec<PathBuf> = self
            .config
            .allowed_mount_roots
            .iter()
            .filter_map(|root| root.canonicalize().ok())
            .collect();
        let built = tokio::task::spawn_blocking(move || {
            let (dir, spec) = (dir_owned, spec_owned);
            let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
            for sub in ["rootfs", "upper", "work"] {
                std::fs::create_dir_all(dir.join(sub))
                    .map_err(|e| EngineError::Io(format!("creating {}/{sub}", dir.display()), e))?;
            }
            let cgroup = manager.create(&id_owned, resources)?;
            let config = InitConfig {
                mode: InitMode::Container {
                    rootfs: dir.join("rootfs"),
                    lower,
                    upper: dir.join("upper"),
                    work: dir.join("work"),
                    cgroup_dir: cgroup.unified_path().map(Path::to_path_buf),
                    bind_roots,
                },
                spec,
                process,
            };
            match launch(&reaper, pid_ns, terminal, stdin, &cgroup, &config) {
                Ok(launched) => Ok((launched, cgroup)),
                Err(e) => {
                    let _ = cgroup.destroy();
                    Err(e.into())
                }
            }
        })
        .await
        .map_err(|e| EngineError::Internal(format!("create task failed: {e}")));
        let (launched, cgroup) = match built.and_then(|r| r) {
            Ok(ok) => ok,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let cgroup = Arc::new(cgroup);
        let init = TrackedProcess::new(
            launched.pid,
            launched.stdio,
            launched.exit,
            ExitContext {
                container_id: id.to_owned(),
                exec_id: String::new(),
                cgroup: cgroup.clone(),
                events: self.events.clone(),
            },
        )
        .map_err(|e| EngineError::Io("registering stdio".into(), e))?;
        Ok(Arc::new(Container {
            id: id.to_owned(),
            spec,
            dir,
            cgroup,
            init,
            gate: Mutex::new(Some(launched.gate)),
            execs: Mutex::default(),
            created_at_ns: process::now_ns(),
            started_at_ns: Default::default(),
        }))
    }

    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        let container = self.get(id)?;
        let gate = container
            .take_gate()
            .ok_or_else(|| EngineError::State(id.to_owned(), "already started".into()))?;
        tokio::task::spawn_blocking(move || gate.start())
            .await
            .map_err(|e| EngineError::Internal(format!("start task failed: {e}")))??;
        container
            .started_at_ns
            .store(process::now_ns(), Ordering::Release);
        Ok(())
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), EngineError> {
        let container = {
            let mut table = self.table();
            let container = table
                .ready
                .get(id)
                .cloned()
                .ok_or_else(|| EngineError::NoContainer(id.to_owned()))?;
            if container.state() == pb::ContainerState::Running && !force {
                return Err(EngineError::State(
                    id.to_owned(),
                    "is running (stop it first, or delete with force)".into(),
                ));
            }
            table.ready.remove(id);
            table.busy.insert(id.to_owned());
            container
        };
        let result = self.tear_down(&container).await;
        let mut table = self.table();
        table.busy.remove(id);
        if result.is_err() {
            // Still there in part: keep it listed so a later delete can
            // finish the job.
            table.ready.insert(id.to_owned(), container);
        }
        result
    }

    async fn tear_down(&self, container: &Arc<Container>) -> Result<(), EngineError> {
        // A created init waiting at the gate exits when the gate drops.
        drop(container.take_gate());
        let cgroup = container.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.kill_all())
            .await
            .map_err(|e| EngineError::Internal(format!("kill task failed: {e}")))??;
        if tokio::time::timeout(KILL_WAIT, container.init.wait())
            .await
            .is_err()
        {
            return Err(EngineError::Internal(format!(
                "init of {} did not exit within {KILL_WAIT:?} of SIGKILL",
                container.id
            )));
        }
        let cgroup = container.cgroup.clone();
        let dir = container.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            cgroup.destroy()?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| EngineError::Io(format!("removing {}", dir.display()), e))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("delete task failed: {e}")))?
    }

    /// Removes every container (the agent is stopping): their processes
    /// die, their cgroups and folders go. Outside a VM this is what keeps a
    /// stopped agent from leaving containers running on the host.
    pub async fn shutdown(&self) {
        let containers: Vec<Arc<Container>> = self.table().ready.values().cloned().collect();
        // SIGTERM first, as a node shutting down would, then what is left
        // is killed by the deletes below.
        for c in &containers {
            let _ = c.cgroup.signal_all(nix::sys::signal::Signal::SIGTERM);
        }
        let all_exited = async {
            for c in &containers {
                c.init.wait().await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, all_exited).await;
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        for id in ids {
            if let Err(e) = self.delete(&id, true).await {
                eprintln!("husk-agent: removing container {id} at shutdown: {e}");
            }
        }
        if let Ok(manager) = &self.cgroups {
            manager.release();
        }
    }

    pub fn status(&self, id: &str) -> Result<pb::ContainerStatus, EngineError> {
        Ok(self.get(id)?.status())
    }

    pub fn list(&self) -> Vec<pb::ContainerStatus> {
        let mut all: Vec<_> = self.table().ready.values().map(|c| c.status()).collect();
        all.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        all
    }
}

/// The pid namespace a new container's init is born in.
pub(super) fn pid_namespace(spec: &Spec) -> PidNamespace {
    let pid = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| {
            ns.iter()
                .find(|n| n.typ() == LinuxNamespaceType::Pid)
                .cloned()
        });
    match pid {
        None => PidNamespace::Same,
        Some(ns) => match ns.path() {
            Some(path) => PidNamespace::Join(path.clone()),
            None => PidNamespace::New,
        },
    }
}
