//! The one error type of the cgroup module. Messages name the cgroup file
//! and the value involved, because "Invalid argument" alone says nothing
//! about which of a dozen writes the kernel refused.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::signal::Signal;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The caller asked for something invalid; maps to gRPC InvalidArgument.
    #[error("invalid {field}: {reason}")]
    InvalidResource { field: &'static str, reason: String },
    /// Valid, but this machine's cgroup setup cannot honor it.
    #[error("{field} is not supported here: {reason}")]
    Unsupported { field: &'static str, reason: String },
    #[error("refusing container id {0:?} as a cgroup name")]
    InvalidId(String),
    #[error("cgroup {} already exists", .0.display())]
    AlreadyExists(PathBuf),
    #[error("cannot locate the agent's cgroups: {0}")]
    Detect(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {signal} to process {pid}: {source}")]
    Signal {
        pid: u32,
        signal: Signal,
        #[source]
        source: Errno,
    },
    #[error("processes {pids:?} survived SIGKILL in {}", path.display())]
    StillPopulated { path: PathBuf, pids: Vec<u32> },
}

impl CgroupError {
    /// The request itself is wrong (gRPC InvalidArgument), as opposed to
    /// the machine failing or lacking a feature.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            CgroupError::InvalidResource { .. } | CgroupError::InvalidId(_)
        )
    }
}
