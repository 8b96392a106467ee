//! The one place where the daemon's errors become the gRPC status a CRI
//! client sees: the code by cause, the message as the whole chain of
//! causes ("create the container: <what the agent said>").

use std::error::Error as _;

use husk_agent_client::AgentClientError;
use tonic::{Code, Status};

use crate::image::{ImageError, ImageErrorKind};
use crate::runtime::RuntimeError;

impl From<RuntimeError> for Status {
    fn from(error: RuntimeError) -> Status {
        Status::new(code(&error), message(&error))
    }
}

impl From<ImageError> for Status {
    fn from(error: ImageError) -> Status {
        RuntimeError::from(error).into()
    }
}

pub fn code(error: &RuntimeError) -> Code {
    match error {
        RuntimeError::InvalidArgument { .. }
        | RuntimeError::AmbiguousId { .. }
        | RuntimeError::Spec(_)
        | RuntimeError::LogFile { .. } => Code::InvalidArgument,
        RuntimeError::NotFound { .. } => Code::NotFound,
        RuntimeError::AlreadyExists { .. } => Code::AlreadyExists,
        RuntimeError::WrongState { .. } => Code::FailedPrecondition,
        RuntimeError::Timeout { .. } => Code::DeadlineExceeded,
        RuntimeError::VmUnresponsive { .. } => Code::Unavailable,
        RuntimeError::VmStart(_)
        | RuntimeError::VmBoot { .. }
        | RuntimeError::Mount { .. }
        | RuntimeError::State(_) => Code::Internal,
        RuntimeError::Agent { source, .. } => agent_code(source),
        RuntimeError::Image(e) => image_code(e.kind()),
    }
}

fn agent_code(error: &AgentClientError) -> Code {
    match error {
        AgentClientError::Call { status, .. } => match status.code() {
            // Transport failures and cancelled streams reach us as these.
            Code::Cancelled | Code::Unknown => Code::Unavailable,
            code => code,
        },
        AgentClientError::Timeout { .. } => Code::DeadlineExceeded,
        AgentClientError::Connect { .. } => Code::Unavailable,
        AgentClientError::Incompatible { .. } => Code::FailedPrecondition,
        AgentClientError::TooLarge { .. } => Code::ResourceExhausted,
        AgentClientError::Invalid { .. } => Code::InvalidArgument,
        AgentClientError::Encode { .. } => Code::Internal,
    }
}

fn image_code(kind: ImageErrorKind) -> Code {
    match kind {
        ImageErrorKind::InvalidReference => Code::InvalidArgument,
        ImageErrorKind::NotFound => Code::NotFound,
        ImageErrorKind::Unauthenticated => Code::Unauthenticated,
        ImageErrorKind::Unavailable => Code::Unavailable,
        ImageErrorKind::Corrupt => Code::DataLoss,
        ImageErrorKind::Internal => Code::Internal,
    }
}

/// `error` and each of its causes, joined by ": ". An agent's refusal is
/// given as the agent's own message: the gRPC status's Display (code,
/// details, metadata) is noise to a CRI user.
pub fn message(error: &RuntimeError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        // The runtime keeps agent errors boxed.
        let agent = c
            .downcast_ref::<Box<AgentClientError>>()
            .map(Box::as_ref)
            .or_else(|| c.downcast_ref::<AgentClientError>());
        let piece = match agent {
            Some(AgentClientError::Call { status, .. }) => status.message().to_string(),
            _ => c.to_string(),
        };
        if !piece.is_empty() && !text.ends_with(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_agent_client::AgentAddr;

    #[test]
    fn agent_refusals_keep_their_code_and_read_as_the_agent_said() {
        let error = RuntimeError::Agent {
            doing: "create the container",
            source: Box::new(AgentClientError::Call {
                call: "CreateContainer",
                addr: AgentAddr::Unix("/x".into()),
                status: Status::invalid_argument("process.args is empty"),
            }),
        };
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "create the container: process.args is empty"
        );
    }

    #[test]
    fn transport_failures_are_unavailable_and_timeouts_deadline_exceeded() {
        let addr = AgentAddr::Unix("/x".into());
        let lost = RuntimeError::Agent {
            doing: "start the container",
            source: Box::new(AgentClientError::Call {
                call: "StartContainer",
                addr: addr.clone(),
                status: Status::unknown("transport error"),
            }),
        };
        assert_eq!(code(&lost), Code::Unavailable);
        let slow = RuntimeError::Agent {
            doing: "start the container",
            source: Box::new(AgentClientError::Timeout {
                call: "StartContainer",
                addr,
                timeout: std::time::Duration::from_secs(30),
            }),
        };
        assert_eq!(code(&slow), Code::DeadlineExceeded);
        assert!(
            message(&slow).contains("timed out after 30s"),
            "{}",
            message(&slow)
        );
    }

    #[test]
    fn codes_by_cause() {
        let not_found = RuntimeError::NotFound {
            kind: "container",
            id: "abc".into(),
        };
        assert_eq!(code(&not_found), Code::NotFound);
        assert_eq!(message(&not_found), "container \"abc\" not found");
        let busy = RuntimeError::wrong_state("container", "abc", "is not running");
        assert_eq!(code(&busy), Code::FailedPrecondition);
        assert_eq!(message(&busy), "container abc is not running");
        let bad = RuntimeError::invalid("config.metadata.name", "is empty");
        assert_eq!(code(&bad), Code::InvalidArgument);
        assert_eq!(message(&bad), "config.metadata.name is empty");
    }
}
