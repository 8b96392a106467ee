//! What the daemon remembers about pods and containers. The CRI configs
//! are kept whole (the k8s-cri types serialize with serde) so every status
//! call can answer from the record.

use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Recorded, VM being started: shown as NotReady.
    Creating,
    Ready,
    NotReady,
}

/// The pod's VMM process, identified by pid *and* start time so a reused
/// pid is never mistaken for it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub pid: i32,
    pub start_time: u64,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub cid: u64,
    /// The pod's folder under the run dir: vsock socket, console log,
    /// shared folder.
    pub run_dir: PathBuf,
}

/// Guest paths of the files the agent wrote for the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxFiles {
    pub hosts: Option<String>,
    pub resolv_conf: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at_ns: i64,
    pub state: PodState,
    pub vm: Option<VmRecord>,
    pub sandbox_files: SandboxFiles,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub finished_at_ns: i64,
    /// CRI reason: Completed, Error, OOMKilled, ...
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image as the user named it, and what it resolved to.
    pub image_ref: String,
    pub image_id: String,
    pub log_path: Option<PathBuf>,
    /// The OCI process the container runs, JSON (ExecSync starts its
    /// commands with the same user, env and cwd).
    pub process_json: String,
    pub state: ContainerState,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub exit: Option<ExitInfo>,
}
