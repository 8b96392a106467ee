//! The image store's errors, and the coarse classes the CRI server maps to
//! gRPC status codes (without this module depending on tonic).

use std::io;

use super::token::TokenError;
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
    /// A client for an endpoint cannot be set up from its host's settings
    /// (`ca_file` unreadable or not PEM, TLS set-up).
    #[error("cannot set up {endpoint}: {detail}")]
    EndpointSetup { endpoint: String, detail: String },
    /// An identity (refresh) token could not be exchanged for an access
    /// token.
    #[error("cannot exchange the identity token for {reference} at {endpoint}: {source}")]
    Token {
        reference: String,
        endpoint: String,
        #[source]
        source: TokenError,
    },
    /// Every endpoint of a pull with mirrors failed; each failure is kept,
    /// in the order the endpoints were tried.
    #[error(
        "cannot pull {reference} from any endpoint: {}{}",
        list(failures),
        skipped(skipped_upstream)
    )]
    AllEndpointsFailed {
        reference: String,
        failures: Vec<EndpointFailure>,
        /// The upstream host `skip_upstream` left out, if any.
        skipped_upstream: Option<String>,
    },
}

/// How one endpoint of a pull failed.
#[derive(Debug)]
pub struct EndpointFailure {
    /// The endpoint as shown, e.g. `http://127.0.0.1:5000 (mirror)`.
    pub endpoint: String,
    /// The image's own registry rather than a mirror.
    pub upstream: bool,
    pub error: ImageError,
}

fn list(failures: &[EndpointFailure]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|f| format!("[{}] {}", f.endpoint, f.error))
        .collect();
    parts.join("; ")
}

fn skipped(upstream: &Option<String>) -> String {
    match upstream {
        Some(host) => format!("; the upstream {host} is not tried (skip_upstream)"),
        None => String::new(),
    }
}

/// The kind a failed pull with several endpoints reports: the one kind
/// they all share; else the upstream's own (it is the authority on what
/// exists and who may pull it; mirrors are caches); else, among mirrors
/// only, `Unavailable` if any was (a retry may succeed), else the last's.
fn combined_kind(failures: &[EndpointFailure]) -> ImageErrorKind {
    let kinds: Vec<ImageErrorKind> = failures.iter().map(|f| f.error.kind()).collect();
    let Some(&last) = kinds.last() else {
        return ImageErrorKind::Unavailable;
    };
    if kinds.iter().all(|&k| k == last) {
        return last;
    }
    let upstream = failures.iter().rev().find(|f| f.upstream);
    if let Some(upstream) = upstream {
        return upstream.error.kind();
    }
    if kinds.contains(&ImageErrorKind::Unavailable) {
        return ImageErrorKind::Unavailable;
    }
    last
}

/// `err` and its causes, each once: reqwest's own message leaves out why
/// a request failed (refused, TLS: unknown issuer), which is what the
/// operator needs.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
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
            Self::EndpointSetup { .. } => K::Internal,
            Self::Token { source, .. } => match source.is_refusal() {
                true => K::Unauthenticated,
                false => K::Unavailable,
            },
            Self::AllEndpointsFailed { failures, .. } => combined_kind(failures),
        }
    }

    /// A failure of this node (disk, index), not of the endpoint: trying
    /// another endpoint would fail the same way.
    pub(crate) fn is_local(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Index { .. } => true,
            Self::Unpack { source, .. } => source.is_local(),
            _ => false,
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
        let detail = chain(&err);
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
            detail: format!("downloading {what}: {}", chain(&err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(endpoint: &str, error: ImageError) -> EndpointFailure {
        EndpointFailure {
            endpoint: endpoint.into(),
            upstream: endpoint.ends_with("(upstream)"),
            error,
        }
    }

    fn not_found() -> ImageError {
        ImageError::NotFound {
            reference: "r".into(),
            detail: "manifest unknown".into(),
        }
    }

    fn unavailable() -> ImageError {
        ImageError::Unavailable {
            reference: "r".into(),
            detail: "connection refused".into(),
        }
    }

    fn all(failures: Vec<EndpointFailure>, skipped_upstream: Option<&str>) -> ImageError {
        ImageError::AllEndpointsFailed {
            reference: "registry.k8s.io/pause:3.10".into(),
            failures,
            skipped_upstream: skipped_upstream.map(Into::into),
        }
    }

    #[test]
    fn every_endpoint_is_named_with_its_failure() {
        let e = all(
            vec![
                failure("http://127.0.0.1:1 (mirror)", unavailable()),
                failure("https://registry.k8s.io (upstream)", not_found()),
            ],
            None,
        );
        assert_eq!(
            e.to_string(),
            "cannot pull registry.k8s.io/pause:3.10 from any endpoint: \
             [http://127.0.0.1:1 (mirror)] registry unavailable while pulling r: connection refused; \
             [https://registry.k8s.io (upstream)] image r not found: manifest unknown"
        );
        let e = all(
            vec![failure("http://m (mirror)", not_found())],
            Some("registry.k8s.io"),
        );
        assert!(
            e.to_string()
                .ends_with("; the upstream registry.k8s.io is not tried (skip_upstream)"),
            "{e}"
        );
    }

    #[test]
    fn the_combined_kind_is_the_most_meaningful() {
        use ImageErrorKind as K;
        let kind = |f: Vec<EndpointFailure>| all(f, None).kind();
        // All the same: that kind.
        assert_eq!(
            kind(vec![
                failure("a (mirror)", not_found()),
                failure("b (upstream)", not_found())
            ]),
            K::NotFound
        );
        // Otherwise the upstream decides.
        assert_eq!(
            kind(vec![
                failure("a (mirror)", unavailable()),
                failure("b (upstream)", not_found())
            ]),
            K::NotFound
        );
        assert_eq!(
            kind(vec![
                failure("a (mirror)", not_found()),
                failure("b (upstream)", unavailable())
            ]),
            K::Unavailable
        );
        // Mirrors only: a retry may help if one was unavailable.
        assert_eq!(
            kind(vec![
                failure("a (mirror)", unavailable()),
                failure("b (mirror)", not_found())
            ]),
            K::Unavailable
        );
        let corrupt = ImageError::DigestMismatch {
            what: "x".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(
            kind(vec![
                failure("a (mirror)", corrupt),
                failure("b (mirror)", not_found())
            ]),
            K::NotFound
        );
    }

    #[test]
    fn only_node_failures_are_local() {
        assert!(ImageError::io("x", io::Error::other("disk full")).is_local());
        assert!(!not_found().is_local());
        assert!(!unavailable().is_local());
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::other("invalid peer certificate: UnknownIssuer"));
        assert_eq!(
            chain(&e),
            "request failed: invalid peer certificate: UnknownIssuer"
        );
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped: {0}")]
        struct Repeats(#[source] io::Error);
        let e = Repeats(io::Error::other("refused"));
        assert_eq!(chain(&e), "wrapped: refused");
    }
}
