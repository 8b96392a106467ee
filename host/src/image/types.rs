//! The store's public data: what the CRI ImageService reports and what
//! CreateContainer needs to build a container from an image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::endpoints::EndpointUrl;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host:port` registries reached over plain HTTP (e.g.
    /// `127.0.0.1:5000`); every other registry over HTTPS. Applies to
    /// upstreams; a mirror's scheme is part of its URL.
    pub insecure: Vec<String>,
    /// Upstream host as in image names (`docker.io`, `registry.k8s.io`) →
    /// the mirrors tried before it.
    pub mirrors: BTreeMap<String, MirrorOptions>,
    /// `host[:port]` → its TLS settings and credentials, for mirrors and
    /// upstreams alike.
    pub hosts: BTreeMap<String, HostOptions>,
}

/// The mirrors of one upstream registry.
#[derive(Debug, Clone, Default)]
pub struct MirrorOptions {
    /// Tried in this order, before the upstream.
    pub endpoints: Vec<EndpointUrl>,
    /// Never fall back to the upstream itself (air-gapped nodes).
    pub skip_upstream: bool,
}

/// Settings of one registry host.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    pub tls: TlsOptions,
    /// Used for a mirror always; for an upstream when the pull carries no
    /// credentials of its own.
    pub auth: RegistryAuth,
}

/// How an HTTPS endpoint's certificate is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Extra trusted roots (PEM), besides the node's.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (self-signed test mirrors): no verification
    /// at all, hostname included.
    pub skip_verify: bool,
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
    /// A registry (bearer) token, sent as is (CRI `registry_token`).
    Bearer(String),
    /// An OAuth2 refresh token (CRI `identity_token`, Docker's
    /// `identitytoken`), exchanged for a bearer token before the pull.
    IdentityToken(String),
}

impl std::fmt::Debug for RegistryAuth {
    /// Never prints a secret: this ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
            Self::Bearer(_) => f.write_str("Bearer(****)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(****)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_a_secret() {
        for auth in [
            RegistryAuth::Basic {
                username: "user".into(),
                password: "hunter2".into(),
            },
            RegistryAuth::Bearer("hunter2".into()),
            RegistryAuth::IdentityToken("hunter2".into()),
        ] {
            let shown = format!("{auth:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("****"), "{shown}");
            let host = HostOptions {
                auth,
                ..Default::default()
            };
            assert!(!format!("{host:?}").contains("hunter2"));
        }
    }
}
