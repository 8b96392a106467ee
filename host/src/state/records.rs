//! What the daemon remembers about pods and containers. The CRI configs
//! are kept whole (the k8s-cri types serialize with serde) so every status
//! call can answer from the record.

use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use oci_spec::runtime::Process;
use serde::{Deserialize, Deserializer, Serialize};

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
    /// How the VM ended, once it has (kept for the pod's verbose status).
    #[serde(default)]
    pub ended: Option<VmEnd>,
}

/// How a pod's VM ended, in words, with what it said last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEnd {
    /// e.g. "exited with status 0", "was killed by SIGSYS (31)".
    pub how: String,
    pub at_ns: i64,
    /// The last lines of the VMM's log.
    pub vmm_log: String,
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
    /// The OCI process the container runs (execs start with the same
    /// user, env and cwd). Records written before it was typed kept it as
    /// a JSON string under `process_json`; both load.
    #[serde(alias = "process_json", deserialize_with = "process_or_json")]
    pub process: Process,
    pub state: ContainerState,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub exit: Option<ExitInfo>,
}

/// A stored process: the typed object, or the JSON string older records
/// hold.
fn process_or_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Process, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Typed(Box<Process>),
        Json(String),
    }
    match Stored::deserialize(deserializer)? {
        Stored::Typed(process) => Ok(*process),
        Stored::Json(text) => serde_json::from_str(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_json(process: serde_json::Value, key: &str) -> String {
        serde_json::json!({
            "id": "c1", "pod_id": "p1", "config": ContainerConfig::default(),
            "image_ref": "busybox", "image_id": "sha256:1", "log_path": null,
            key: process, "state": "Running", "created_at_ns": 1,
            "started_at_ns": 2, "exit": null
        })
        .to_string()
    }

    #[test]
    fn a_record_keeps_its_process_typed_and_reads_the_old_json_form() {
        let process = serde_json::json!({
            "args": ["nginx"], "cwd": "/srv", "env": ["A=1"],
            "user": {"uid": 101, "gid": 101}
        });
        let old: ContainerRecord =
            serde_json::from_str(&record_json(process.to_string().into(), "process_json")).unwrap();
        assert_eq!(
            old.process.args().as_deref(),
            Some(&["nginx".to_string()][..])
        );
        assert_eq!(old.process.user().uid(), 101);
        let saved = serde_json::to_string(&old).unwrap();
        assert!(saved.contains("\"process\":{"), "{saved}");
        let again: ContainerRecord = serde_json::from_str(&saved).unwrap();
        assert_eq!(again.process, old.process);
        let typed: ContainerRecord =
            serde_json::from_str(&record_json(process, "process")).unwrap();
        assert_eq!(typed.process, old.process);
    }

    #[test]
    fn a_process_that_is_neither_form_is_an_error() {
        let bad = record_json(serde_json::json!("{not json"), "process_json");
        assert!(serde_json::from_str::<ContainerRecord>(&bad).is_err());
    }

    #[test]
    fn vm_records_without_an_end_still_load() {
        let vm: VmRecord = serde_json::from_value(serde_json::json!({
            "pid": 7, "start_time": 9, "vcpus": 1, "memory_mib": 128, "cid": 3,
            "run_dir": "/run/husk/pods/p1"
        }))
        .unwrap();
        assert_eq!(vm.ended, None);
    }
}
