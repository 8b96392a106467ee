//! SetupSandbox: what every container of the pod shares — hostname,
//! /etc/hosts, resolv.conf and namespaced sysctls — set in the agent's own
//! namespaces (the guest's in a VM; private ones outside a VM, see main).

use std::path::{Path, PathBuf};

use husk_proto::agent::v1::{SetupSandboxRequest, SetupSandboxResponse};
use husk_proto::MAX_SANDBOX_FILE_BYTES;
use tonic::Status;

use crate::engine::check_sysctl;

/// Where the sandbox's files live: `<agent root>/sandbox`.
#[derive(Clone)]
pub struct Sandbox {
    dir: PathBuf,
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<SandboxError> for Status {
    fn from(e: SandboxError) -> Status {
        match e {
            SandboxError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            SandboxError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SandboxError {
    SandboxError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Sandbox {
    pub fn new(agent_root: &Path) -> Self {
        Self {
            dir: agent_root.join("sandbox"),
        }
    }

    /// The folder containers may bind-mount files from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks everything first, so a bad request changes nothing.
    pub fn setup(
        &self,
        request: &SetupSandboxRequest,
    ) -> Result<SetupSandboxResponse, SandboxError> {
        let hostname = &request.hostname;
        if hostname.len() > 64
            || !hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(invalid(
                "hostname",
                format!(
                    "{hostname:?} is not a hostname of at most 64 letters, digits, '-' and '.'"
                ),
            ));
        }
        for (field, content) in [
            ("hosts", &request.hosts),
            ("resolv_conf", &request.resolv_conf),
        ] {
            if content.len() > MAX_SANDBOX_FILE_BYTES {
                return Err(invalid(
                    field,
                    format!(
                        "{} bytes is above the limit of {MAX_SANDBOX_FILE_BYTES}",
                        content.len()
                    ),
                ));
            }
        }
        for (key, value) in &request.sysctls {
            check_sysctl(&format!("sysctls[{key:?}]"), key)
                .map_err(|e| invalid("sysctls", e.to_string()))?;
            if value.len() > 4096 || value.contains('\0') {
                return Err(invalid(
                    format!("sysctls[{key:?}]"),
                    "value too long or has NUL",
                ));
            }
        }

        let io = |what: String| move |source| SandboxError::Io { what, source };
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let hosts_path = self.dir.join("hosts");
        let resolv_path = self.dir.join("resolv.conf");
        let hostname_path = self.dir.join("hostname");
        for (path, content) in [
            (&hosts_path, &request.hosts),
            (&resolv_path, &request.resolv_conf),
        ] {
            if !content.is_empty() || !path.exists() {
                write_atomic(path, content.as_bytes())
                    .map_err(io(format!("writing {}", path.display())))?;
            }
        }
        if !hostname.is_empty() {
            nix::unistd::sethostname(hostname).map_err(|e| SandboxError::Io {
                what: "sethostname".into(),
                source: e.into(),
            })?;
            write_atomic(&hostname_path, format!("{hostname}\n").as_bytes())
                .map_err(io(format!("writing {}", hostname_path.display())))?;
        } else if !hostname_path.exists() {
            let current = nix::unistd::gethostname().unwrap_or_default();
            write_atomic(
                &hostname_path,
                format!("{}\n", current.to_string_lossy()).as_bytes(),
            )
            .map_err(io(format!("writing {}", hostname_path.display())))?;
        }
        for (key, value) in &request.sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(io(format!("sysctl {key}")))?;
        }
        Ok(SetupSandboxResponse {
            hosts_path: hosts_path.display().to_string(),
            resolv_conf_path: resolv_path.display().to_string(),
            hostname_path: hostname_path.display().to_string(),
        })
    }
}

/// Writes through a temporary file and a rename, so a container bind
/// mounting the old file never sees a half-written one.
///
/// Note: a container that already bind-mounted the old file keeps seeing
/// it (the mount pins the old inode); new containers see the new one.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
