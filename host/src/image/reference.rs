//! Image references as users write them, normalized the way kubelet and
//! containerd do (`busybox` is `docker.io/library/busybox:latest`).

use oci_client::Reference;

use super::digest::{is_hex64, Digest};
use super::error::ImageError;

/// A parsed, normalized reference to pull or look up.
#[derive(Debug, Clone)]
pub struct ImageName {
    pub reference: Reference,
    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub repo: String,
    /// `Some` when the reference names a digest (which wins over a tag).
    pub digest: Option<Digest>,
}

impl ImageName {
    pub fn parse(text: &str) -> Result<ImageName, ImageError> {
        let invalid = |reason: String| ImageError::InvalidReference {
            reference: text.to_string(),
            reason,
        };
        let reference: Reference = text.parse().map_err(|e| invalid(format!("{e}")))?;
        // The regex lets an uppercase first component through when it is
        // taken for a Docker Hub path; repositories are lowercase.
        if reference
            .repository()
            .bytes()
            .any(|b| b.is_ascii_uppercase())
        {
            return Err(invalid("repository names must be lowercase".into()));
        }
        let repo = format!("{}/{}", reference.registry(), reference.repository());
        let digest =
            match reference.digest() {
                None => None,
                Some(d) => Some(Digest::parse(d).ok_or_else(|| {
                    invalid(format!("only sha256 digests are supported, not {d}"))
                })?),
            };
        Ok(ImageName {
            reference,
            repo,
            digest,
        })
    }

    /// `repo:tag`, unless the reference names a digest.
    pub fn tag(&self) -> Option<String> {
        if self.digest.is_some() {
            return None;
        }
        Some(format!(
            "{}:{}",
            self.repo,
            self.reference.tag().unwrap_or("latest")
        ))
    }

    /// `repo@digest` for a manifest digest of this repository.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{}", self.repo, digest)
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.digest, self.tag()) {
            (Some(d), _) => write!(f, "{}@{d}", self.repo),
            (None, Some(t)) => f.write_str(&t),
            (None, None) => f.write_str(&self.repo),
        }
    }
}

/// What a `get`/`remove` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An image id: `sha256:<hex>` or the bare hex.
    Id(String),
    /// `repo:tag`.
    Tag(String),
    /// `repo@sha256:<hex>`.
    RepoDigest(String),
}

impl Lookup {
    pub fn parse(text: &str) -> Result<Lookup, ImageError> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if is_hex64(hex) {
            return Ok(Lookup::Id(format!("sha256:{hex}")));
        }
        let name = ImageName::parse(text)?;
        Ok(match &name.digest {
            Some(d) => Lookup::RepoDigest(name.repo_digest(d)),
            None => Lookup::Tag(name.tag().unwrap_or_default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_kubelet() {
        assert_eq!(
            Lookup::parse("busybox").unwrap(),
            Lookup::Tag("docker.io/library/busybox:latest".into())
        );
        assert_eq!(
            Lookup::parse("127.0.0.1:5000/husk-test/busybox:multi").unwrap(),
            Lookup::Tag("127.0.0.1:5000/husk-test/busybox:multi".into())
        );
        let hex = "ab".repeat(32);
        assert_eq!(
            Lookup::parse(&hex).unwrap(),
            Lookup::Id(format!("sha256:{hex}"))
        );
        assert_eq!(
            Lookup::parse(&format!("sha256:{hex}")).unwrap(),
            Lookup::Id(format!("sha256:{hex}"))
        );
        assert_eq!(
            Lookup::parse(&format!("quay.io/a/b@sha256:{hex}")).unwrap(),
            Lookup::RepoDigest(format!("quay.io/a/b@sha256:{hex}"))
        );
    }

    #[test]
    fn malformed_references_are_invalid() {
        for bad in ["", "UPPER/case", "a b", "busybox@sha256:123", "x::y"] {
            let err = Lookup::parse(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                super::super::ImageErrorKind::InvalidReference,
                "{bad}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
