//! Errors of the runtime, each with the gRPC code the CRI client sees.

use tonic::{Code, Status};

use crate::image::{ImageError, ImageErrorKind};
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The guest agent refused or failed a call; its code is kept.
    #[error("{context}: {status_message}")]
    Agent {
        context: String,
        code: Code,
        status_message: String,
    },
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Image(#[from] ImageError),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

impl RuntimeError {
    pub fn code(&self) -> Code {
        match self {
            RuntimeError::InvalidArgument(_) => Code::InvalidArgument,
            RuntimeError::NotFound(_) => Code::NotFound,
            RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
            RuntimeError::FailedPrecondition(_) => Code::FailedPrecondition,
            RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            RuntimeError::Unavailable(_) => Code::Unavailable,
            RuntimeError::Internal(_) | RuntimeError::State(_) => Code::Internal,
            RuntimeError::Agent { code, .. } => match code {
                // Timeouts and transport failures reach us as these.
                Code::Cancelled | Code::Unknown => Code::Unavailable,
                code => *code,
            },
            RuntimeError::Image(e) => image_code(e.kind()),
        }
    }

    /// Wraps a failed agent call.
    pub fn agent(context: impl Into<String>, status: Status) -> RuntimeError {
        RuntimeError::Agent {
            context: context.into(),
            code: status.code(),
            status_message: status.message().to_string(),
        }
    }
}

impl From<RuntimeError> for Status {
    fn from(error: RuntimeError) -> Status {
        Status::new(error.code(), error.to_string())
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
