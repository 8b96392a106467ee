//! Why a CRI container config cannot become an OCI spec. The daemon maps
//! every variant to gRPC `InvalidArgument`; each names the CRI field
//! (relative to `ContainerConfig`, or `sandbox_config.…` for the pod's).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A value the CRI does not allow, or that the image cannot satisfy.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A valid request a husk microVM cannot honour (yet).
    #[error("{field}: {reason}")]
    Unsupported { field: String, reason: String },
    /// The Localhost seccomp profile could not be read.
    #[error("{field}: cannot read seccomp profile {path}: {source}")]
    SeccompRead {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Localhost seccomp profile is not OCI `LinuxSeccomp` JSON.
    #[error("{field}: seccomp profile {path} is not OCI LinuxSeccomp JSON: {source}")]
    SeccompParse {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The spec could not be encoded as JSON.
    #[error("encoding the OCI spec: {0}")]
    Json(#[from] serde_json::Error),
    /// oci-spec refused a value (a builder's own check).
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unsupported {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
