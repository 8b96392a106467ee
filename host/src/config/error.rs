//! Why a configuration file was refused.

use std::path::PathBuf;

/// A configuration the daemon will not start with. Every variant names the
/// file or the field, so the operator can fix it without guessing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong type; the toml crate's message
    /// already names the key, line and column.
    #[error(transparent)]
    Parse(#[from] toml::de::Error),
    /// A well-formed value the daemon cannot use.
    /// `field` is written as in the file, e.g.
    /// `registry.mirrors."registry.k8s.io".endpoints[0]`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Any of the above, found in a file.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
