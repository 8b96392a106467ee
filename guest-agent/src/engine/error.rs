//! The engine's errors and the gRPC codes they become.

use tonic::Status;

use super::launch::LaunchError;
use super::process::StdioError;
use super::spec::SpecError;
use super::{cgroups, rootfs, seccomp};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("cgroups are not available on this machine: {0}")]
    NoCgroups(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("no container {0:?}")]
    NoContainer(String),
    #[error("container {0:?} has no process {1:?}")]
    NoExec(String, String),
    #[error("too many {0} (limit {1})")]
    TooMany(&'static str, usize),
    #[error("container {0:?} {1}")]
    State(String, String),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        let message = e.to_string();
        match &e {
            EngineError::Spec(_) => Status::invalid_argument(message),
            EngineError::Rootfs(r) if r.is_invalid_argument() => Status::invalid_argument(message),
            EngineError::Seccomp(
                seccomp::SeccompError::Install(_) | seccomp::SeccompError::ThreadSync(_),
            ) => Status::internal(message),
            EngineError::Seccomp(_) => Status::invalid_argument(message),
            EngineError::Cgroup(c) if c.is_invalid_argument() => Status::invalid_argument(message),
            EngineError::Exists(_) => Status::already_exists(message),
            EngineError::NoContainer(_) | EngineError::NoExec(..) => Status::not_found(message),
            EngineError::TooMany(..) => Status::resource_exhausted(message),
            EngineError::State(..) | EngineError::NoCgroups(_) => {
                Status::failed_precondition(message)
            }
            EngineError::Stdio(StdioError::NoStdin | StdioError::OutputBusy) => {
                Status::failed_precondition(message)
            }
            // The init's own report (e.g. the executable is missing) is
            // about the request, not the agent.
            EngineError::Launch(LaunchError::Init(_)) => Status::failed_precondition(message),
            _ => Status::internal(message),
        }
    }
}
