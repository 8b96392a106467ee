//! The registry side of a pull, over oci-client. We verify every digest
//! ourselves rather than trust the library's checks, and bound what we
//! accept to what the manifest declared.

use std::io::Write;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::ImageError;
use super::manifest::ACCEPTED;
use super::types::{RegistryAuth, RegistryOptions};

/// One pull's connection to a registry. A client per pull, because
/// oci-client keeps the first credentials it sees for a registry, and two
/// pods may pull from the same registry with different secrets.
pub struct Registry {
    client: Client,
    auth: oci_client::secrets::RegistryAuth,
}

impl Registry {
    /// `reference` only names the pull in errors.
    pub fn new(
        options: &RegistryOptions,
        auth: RegistryAuth,
        reference: &str,
    ) -> Result<Registry, ImageError> {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure.clone()),
            // We resolve indexes ourselves (always linux/amd64).
            platform_resolver: None,
            ..Default::default()
        };
        // reqwest panics when the node has no CA certificates at all
        // (oci-client builds a default HTTP client first): a missing
        // package must fail the pull, not the daemon.
        let build = std::panic::AssertUnwindSafe(|| Client::new(config));
        let client = std::panic::catch_unwind(build).map_err(|_| ImageError::Unavailable {
            reference: reference.to_string(),
            detail: "cannot set up TLS: no CA certificates found on this node \
                         (install Debian's ca-certificates, or set SSL_CERT_FILE)"
                .into(),
        })?;
        Ok(Registry {
            client,
            auth: auth.into(),
        })
    }

    /// Fetches the manifest `reference` names and its digest, checked
    /// against the digest in the reference when there is one.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, Digest), ImageError> {
        let shown = reference.whole();
        let (body, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &ACCEPTED)
            .await
            .map_err(|e| ImageError::from_registry(&shown, e))?;
        let actual = Digest::of(&body);
        if let Some(expected) = reference.digest() {
            if actual.as_str() != expected {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {shown}"),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((body.to_vec(), actual))
    }

    /// Downloads blob `digest` into `out`, refusing more than `max_bytes`
    /// and content that does not hash to `digest`. Returns its size.
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        max_bytes: u64,
        out: &mut std::fs::File,
    ) -> Result<u64, ImageError> {
        let shown = reference.whole();
        let what = format!("blob {digest} of {shown}");
        let mut stream = self
            .client
            .pull_blob_stream(reference, digest.as_str())
            .await
            .map_err(|e| ImageError::from_registry(&shown, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageError::from_stream(&shown, &what, e))?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(ImageError::BadContent {
                    reference: shown,
                    what: "blob",
                    detail: format!("{digest} is larger than the {max_bytes} bytes declared"),
                });
            }
            hasher.update(&chunk);
            // A local disk write per chunk: short, so done inline.
            out.write_all(&chunk)
                .map_err(|e| ImageError::io(format!("cannot write {what}"), e))?;
        }
        let actual = Digest::from_hasher(hasher);
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                what,
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(size)
    }
}
