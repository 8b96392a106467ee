//! The daemon's TOML configuration file.
//!
//! Every key is optional: an empty file gives the defaults below, which are
//! the paths the packaging installs. Unknown keys are refused, so a typo
//! cannot silently leave a setting at its default.
//!
//! ```toml
//! socket = "/run/husk/husk.sock"
//! log_level = "info,husk::image=debug"
//! runtime_handlers = ["husk"]
//!
//! [vm]
//! kernel = "/usr/share/husk/vmlinux"
//! default_memory_mib = 256
//!
//! [registry]
//! insecure = ["127.0.0.1:5000"]
//!
//! [registry.mirrors."registry.k8s.io"]
//! endpoints = ["http://127.0.0.1:5000"]
//! ```

mod error;
mod registry;
mod sizing;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use error::ConfigError;
pub use registry::{HostConfig, MirrorConfig, RegistryConfig, Secret};

/// The name of the VMM binary looked for beside the daemon's executable.
const VMM_BINARY: &str = "husk-vmm";
/// Where the VMM is assumed to be when the daemon cannot tell where it
/// was started from.
const FALLBACK_VMM: &str = "/usr/local/bin/husk-vmm";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The CRI gRPC unix socket kubelet connects to.
    pub socket: PathBuf,
    /// Pod and container records (survive a daemon restart).
    pub state_dir: PathBuf,
    /// The node's image store.
    pub image_dir: PathBuf,
    /// Per-pod runtime files: VMM sockets and console logs.
    pub run_dir: PathBuf,
    /// A `tracing` EnvFilter directive list, e.g. `info,husk::spec=debug`.
    pub log_level: String,
    /// RuntimeClass handlers this daemon serves; the empty handler (no
    /// RuntimeClass) is always accepted.
    pub runtime_handlers: Vec<String>,
    /// How pod microVMs are started and sized.
    pub vm: VmConfig,
    /// Image registry access.
    pub registry: RegistryConfig,
}

/// How pod microVMs are started and sized.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// The `husk-vmm` binary; by default the one beside the daemon's own
    /// executable (see [`default_vmm_path`]).
    pub vmm: PathBuf,
    /// The guest kernel (uncompressed ELF `vmlinux`).
    pub kernel: PathBuf,
    /// The guest initramfs holding husk-agent as `/init`.
    pub initramfs: PathBuf,
    /// vCPUs of a pod without a CPU limit.
    pub default_vcpus: u8,
    /// Guest memory of a pod without memory limits, overhead included.
    pub default_memory_mib: u64,
    /// Added to a pod's memory limits: guest kernel, agent and the tmpfs
    /// the writable layers live in.
    pub overhead_memory_mib: u64,
    /// Upper bound on a pod's vCPUs.
    pub max_vcpus: u8,
    /// Upper bound on a pod's guest memory.
    pub max_memory_mib: u64,
    /// How long a VM may take until its agent answers.
    pub boot_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/husk/husk.sock"),
            state_dir: PathBuf::from("/var/lib/husk/state"),
            image_dir: PathBuf::from("/var/lib/husk/images"),
            run_dir: PathBuf::from("/run/husk"),
            log_level: "info".to_string(),
            runtime_handlers: vec!["husk".to_string()],
            vm: VmConfig::default(),
            registry: RegistryConfig::default(),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vmm: default_vmm_path(),
            kernel: PathBuf::from("/usr/share/husk/vmlinux"),
            initramfs: PathBuf::from("/usr/share/husk/initramfs.cpio"),
            default_vcpus: 1,
            default_memory_mib: 256,
            overhead_memory_mib: 128,
            max_vcpus: 8,
            max_memory_mib: 16384,
            // The nested test rig emulates the L1 host in software.
            boot_timeout_secs: 120,
        }
    }
}

/// `husk-vmm` beside the running executable, so an unpacked release (or a
/// cargo target directory) works without configuration.
pub fn default_vmm_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(VMM_BINARY)))
        .unwrap_or_else(|| PathBuf::from(FALLBACK_VMM))
}

impl Config {
    /// Reads, parses and validates the file at `path`. A missing file is an
    /// error: a daemon told to use a file must not start on defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses and validates a configuration held in memory.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether a RunPodSandbox `runtime_handler` is served by this daemon.
    pub fn accepts_runtime_handler(&self, handler: &str) -> bool {
        handler.is_empty() || self.runtime_handlers.iter().any(|h| h == handler)
    }
}

#[cfg(test)]
mod tests;
