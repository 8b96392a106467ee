//! The store's public data: what the CRI ImageService reports and what
//! CreateContainer needs to build a container from an image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host:port` registries reached over plain HTTP (e.g.
    /// `127.0.0.1:5000`); every other registry over HTTPS.
    pub insecure: Vec<String>,
}

/// Credentials for one pull (CRI's AuthConfig, already decoded).
#[derive(Clone, Default)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for RegistryAuth {
    /// Never prints the password: this ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
        }
    }
}

impl From<RegistryAuth> for oci_client::secrets::RegistryAuth {
    fn from(auth: RegistryAuth) -> Self {
        match auth {
            RegistryAuth::Anonymous => Self::Anonymous,
            RegistryAuth::Basic { username, password } => Self::Basic(username, password),
        }
    }
}

/// An image on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<config digest hex>`, as containerd and CRI-O name images.
    pub id: String,
    /// Fully qualified tags, e.g. `docker.io/library/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// `<repo>@sha256:<hex>` of what was pulled: the index's digest when
    /// the reference named an index.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes (what CRI reports).
    pub size: u64,
    pub config: ImageConfig,
    /// Layer keys (uncompressed diff-id hex), lowest layer first; see
    /// [`super::ImageStore::layer_dir`].
    pub layers: Vec<String>,
}

/// The part of the image config a container starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub user: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// What the image filesystem uses (CRI ImageFsInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}
