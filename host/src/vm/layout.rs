//! Where a pod's VM keeps its files under the daemon's run dir.

use std::path::{Path, PathBuf};

/// `<run_dir>/pods/<pod id>/`: the VMM's hybrid-vsock socket, its serial
/// console log and the folder it shares with the guest over virtio-fs.
#[derive(Debug, Clone)]
pub struct VmLayout {
    root: PathBuf,
}

impl VmLayout {
    pub fn new(run_dir: &Path, pod_id: &str) -> VmLayout {
        VmLayout {
            root: run_dir.join("pods").join(pod_id),
        }
    }

    pub fn from_root(root: PathBuf) -> VmLayout {
        VmLayout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.root.join("vsock.sock")
    }

    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// husk-vmm's own stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.root.join("vmm.log")
    }

    /// Shared with the guest at [`husk_proto::SHARED_DIR_GUEST_PATH`].
    pub fn shared_dir(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// Image layers, bind-mounted read-only: `layers/<key>`.
    pub fn layer_mount(&self, key: &str) -> PathBuf {
        self.shared_dir().join(LAYERS_DIR).join(key)
    }

    /// The guest-relative path the agent takes for a layer.
    pub fn layer_guest_relative(key: &str) -> String {
        format!("{LAYERS_DIR}/{key}")
    }

    /// Host paths a container mounts: `mounts/<container>/<index>`.
    pub fn container_mount(&self, container_id: &str, index: usize) -> PathBuf {
        self.shared_dir()
            .join(MOUNTS_DIR)
            .join(container_id)
            .join(index.to_string())
    }

    pub fn container_mounts_dir(&self, container_id: &str) -> PathBuf {
        self.shared_dir().join(MOUNTS_DIR).join(container_id)
    }

    pub fn container_mount_guest_path(container_id: &str, index: usize) -> String {
        format!(
            "{}/{MOUNTS_DIR}/{container_id}/{index}",
            husk_proto::SHARED_DIR_GUEST_PATH
        )
    }
}

const LAYERS_DIR: &str = "layers";
const MOUNTS_DIR: &str = "mounts";
