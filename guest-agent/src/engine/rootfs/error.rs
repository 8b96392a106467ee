//! The one error type of the rootfs module.

use std::path::PathBuf;

use nix::errno::Errno;

/// Why a container's filesystem view could not be checked or built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The spec (or the plan) asks for something refused. The agent maps
    /// this, and only this, to gRPC `InvalidArgument`.
    #[error("{field}: {reason} (got {value:?})")]
    Invalid {
        /// The OCI field, e.g. `mounts[3].destination`.
        field: String,
        /// The offending value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A system call failed while building the view.
    #[error("{field}: {action} {path:?}: {source}")]
    Sys {
        /// The OCI field being honoured, e.g. `mounts[2]`.
        field: String,
        /// What was being done, e.g. `mount tmpfs on`.
        action: &'static str,
        /// The path acted on (as the container sees it, where it has one).
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

impl RootfsError {
    /// True for errors in the request rather than in the system.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }

    pub(super) fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// For `map_err`: wraps an errno with the field, action and path.
    pub(super) fn sys(
        field: &str,
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(Errno) -> Self {
        let field = field.to_owned();
        let path = path.into();
        move |source| Self::Sys {
            field,
            action,
            path,
            source,
        }
    }
}
