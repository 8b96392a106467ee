//! The image store's errors, and the coarse classes the CRI server maps to
//! gRPC status codes (without this module depending on tonic).

use std::io;

use super::unpack::UnpackError;

/// What kind of failure an [`ImageError`] is, for the CRI server to pick a
/// gRPC code: kubelet retries `Unavailable` but not `InvalidArgument`, and
/// shows `NotFound` as "image not found" to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageErrorKind {
    /// The reference text is malformed (→ `InvalidArgument`).
    InvalidReference,
    /// The registry has no such repository, tag, manifest or platform
    /// (→ `NotFound`).
    NotFound,
    /// The registry refused our credentials (→ `Unauthenticated`).
    Unauthenticated,
    /// The registry could not be reached or failed (→ `Unavailable`).
    Unavailable,
    /// The registry sent content we cannot trust or use: digest mismatch,
    /// bad manifest, unsupported media type, bad or unsafe archive
    /// (→ `DataLoss`).
    Corrupt,
    /// A local failure: disk, index file (→ `Internal`).
    Internal,
}

/// Errors of the image store. Every message names the reference or digest
/// it is about, because it ends up in `kubectl describe pod`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The registry has no such repository, tag or manifest.
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    /// An image index holds no linux/amd64 image.
    #[error("image {reference} has no linux/amd64 image; its index offers: {available}")]
    NoMatchingPlatform {
        reference: String,
        available: String,
    },
    /// The registry refused our credentials.
    #[error("registry refused access to {reference}: {detail}")]
    Unauthenticated { reference: String, detail: String },
    /// The registry could not be reached or answered with a server error.
    #[error("registry unavailable while pulling {reference}: {detail}")]
    Unavailable { reference: String, detail: String },
    /// Any other registry protocol failure.
    #[error("registry error while pulling {reference}: {detail}")]
    Registry { reference: String, detail: String },
    /// Content whose sha256 is not the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A manifest, index or config we cannot use.
    #[error("bad {what} of {reference}: {detail}")]
    BadContent {
        reference: String,
        what: &'static str,
        detail: String,
    },
    /// A layer or config media type this store does not handle.
    #[error("{reference}: unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
    },
    /// A layer that cannot be unpacked.
    #[error("cannot unpack layer {digest} of {reference}: {source}")]
    Unpack {
        reference: String,
        digest: String,
        #[source]
        source: UnpackError,
    },
    /// A local filesystem failure.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The persisted index cannot be read or written.
    #[error("image index {path}: {detail}")]
    Index { path: String, detail: String },
}

impl ImageError {
    /// The class of this error, for the CRI server's gRPC code.
    pub fn kind(&self) -> ImageErrorKind {
        use ImageErrorKind as K;
        match self {
            Self::InvalidReference { .. } => K::InvalidReference,
            Self::NotFound { .. } | Self::NoMatchingPlatform { .. } => K::NotFound,
            Self::Unauthenticated { .. } => K::Unauthenticated,
            Self::Unavailable { .. } => K::Unavailable,
            Self::DigestMismatch { .. }
            | Self::BadContent { .. }
            | Self::UnsupportedMediaType { .. } => K::Corrupt,
            Self::Unpack { source, .. } if source.is_local() => K::Internal,
            Self::Unpack { .. } => K::Corrupt,
            Self::Registry { .. } | Self::Io { .. } | Self::Index { .. } => K::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Classifies an oci-client failure met while pulling `reference`.
    pub(crate) fn from_registry(
        reference: &str,
        err: oci_client::errors::OciDistributionError,
    ) -> Self {
        use oci_client::errors::{DigestError, OciDistributionError as E, OciErrorCode as C};
        let reference = reference.to_string();
        let detail = err.to_string();
        match err {
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
                Self::Unauthenticated { reference, detail }
            }
            E::ImageManifestNotFoundError(_) => Self::NotFound { reference, detail },
            E::RegistryError { ref envelope, .. } => {
                let code = envelope.errors.first().map(|e| &e.code);
                match code {
                    Some(
                        C::ManifestUnknown
                        | C::NameUnknown
                        | C::BlobUnknown
                        | C::NotFound
                        | C::ManifestBlobUnknown,
                    ) => Self::NotFound { reference, detail },
                    Some(C::Unauthorized | C::Denied) => {
                        Self::Unauthenticated { reference, detail }
                    }
                    Some(C::Toomanyrequests) => Self::Unavailable { reference, detail },
                    _ => Self::Registry { reference, detail },
                }
            }
            E::ServerError { code, .. } => match code {
                404 => Self::NotFound { reference, detail },
                401 | 403 => Self::Unauthenticated { reference, detail },
                429 | 500..=599 => Self::Unavailable { reference, detail },
                _ => Self::Registry { reference, detail },
            },
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                Self::DigestMismatch {
                    what: format!("content of {reference}"),
                    expected,
                    actual,
                }
            }
            E::RequestError(_) => Self::Unavailable { reference, detail },
            E::IoError(e) => Self::from_stream(&reference, "registry", e),
            _ => Self::Registry { reference, detail },
        }
    }

    /// Classifies an error of a blob download stream: oci-client reports
    /// its own digest check as an I/O error wrapping a `DigestError`.
    pub(crate) fn from_stream(reference: &str, what: &str, err: io::Error) -> Self {
        use oci_client::errors::DigestError;
        if let Some(DigestError::VerificationError { expected, actual }) =
            err.get_ref().and_then(|e| e.downcast_ref::<DigestError>())
        {
            return Self::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        Self::Unavailable {
            reference: reference.to_string(),
            detail: format!("downloading {what}: {err}"),
        }
    }
}
