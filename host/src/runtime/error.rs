//! Errors of the runtime, by cause. Each variant keeps what caused it (the
//! agent's error with its status, the VM's exit, the mount or state error);
//! `server::status` turns them into the gRPC code and message a CRI client
//! sees, in one place.

use std::time::Duration;

use husk_agent_client::AgentClientError;

use crate::image::ImageError;
use crate::spec::SpecError;
use crate::state::StateError;
use crate::vm::{MountError, VmError, VmExit};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A request field the CRI client got wrong.
    #[error("{field} {problem}")]
    InvalidArgument { field: String, problem: String },
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} id prefix {prefix:?} is ambiguous")]
    AmbiguousId { kind: &'static str, prefix: String },
    #[error("{what} is already used by {kind} {owner}")]
    AlreadyExists {
        what: String,
        kind: &'static str,
        owner: String,
    },
    /// The call does not fit the object's state (a container not running,
    /// a pod whose VM is gone).
    #[error("{kind} {id} {state}")]
    WrongState {
        kind: &'static str,
        id: String,
        state: String,
    },
    #[error("the container's OCI spec")]
    Spec(#[from] SpecError),
    #[error("cannot start the pod's VM")]
    VmStart(#[source] VmError),
    /// The VMM ended before its agent answered.
    #[error("the pod's VM {exit} while booting; {logs}")]
    VmBoot { exit: VmExit, logs: String },
    /// The agent did not answer in time after the VM started.
    #[error("the pod's VM did not answer within {deadline:?}; {logs}")]
    VmUnresponsive {
        deadline: Duration,
        logs: String,
        #[source]
        source: Box<AgentClientError>,
    },
    #[error("cannot {action}")]
    Mount {
        action: &'static str,
        #[source]
        source: MountError,
    },
    #[error("cannot open the container log file {path}")]
    LogFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An agent call failed; `doing` says what for.
    #[error("{doing}")]
    Agent {
        doing: &'static str,
        // Boxed: a tonic status is large, and every runtime call returns
        // this enum.
        #[source]
        source: Box<AgentClientError>,
    },
    /// Something we waited for did not happen in time.
    #[error("{what} within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("the daemon's state")]
    State(#[from] StateError),
    #[error("the image store")]
    Image(#[from] ImageError),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

impl RuntimeError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn wrong_state(kind: &'static str, id: &str, state: impl Into<String>) -> RuntimeError {
        RuntimeError::WrongState {
            kind,
            id: id.to_owned(),
            state: state.into(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }
}

/// Names what an agent call was for: `client.start(..).await.doing("start
/// the container")?`.
pub trait AgentResultExt<T> {
    fn doing(self, doing: &'static str) -> Result<T>;
}

impl<T> AgentResultExt<T> for std::result::Result<T, AgentClientError> {
    fn doing(self, doing: &'static str) -> Result<T> {
        self.map_err(|source| RuntimeError::Agent {
            doing,
            source: Box::new(source),
        })
    }
}
