//! The seam between the runtime and whatever runs pod VMs (in the spirit
//! of containerd's sandbox controller): start one from a spec and a
//! folder, find it again after a restart, list the ones nobody owns. The
//! husk-vmm implementation is [`super::HuskVmm`]; tests use a fake.

use std::path::{Path, PathBuf};

use super::{VmHandle, VmLayout};

/// What a pod VM is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// The guest's vsock context id.
    pub cid: u64,
}

/// A VM found running under the run dir: its pod (the folder it serves)
/// and its process identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningVm {
    pub pod_id: String,
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot prepare the VM folder {path}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {vmm}")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch VMM pid {pid}")]
    Watch {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Runs pod VMs. Every method returns at once: booting, and waiting for
/// the agent, is the caller's business.
pub trait VmController: Send + Sync + 'static {
    /// Prepares the pod's folder and starts its VM.
    fn start(&self, spec: &VmSpec, layout: &VmLayout) -> Result<VmHandle, VmError>;
    /// The VM recorded as (`pid`, `start_time`) if it still runs.
    fn reattach(&self, pid: i32, start_time: u64, layout: &VmLayout) -> Option<VmHandle>;
    /// Every VM serving a pod folder under `pods_dir`, owned or not.
    fn running(&self, pods_dir: &Path) -> Vec<RunningVm>;
}
