//! The registry side of a pull, over oci-client. We verify every digest
//! ourselves rather than trust the library's checks, and bound what we
//! accept to what the manifest declared.

use std::io::{Read as _, Write};
use std::path::Path;

use futures::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::endpoints::Endpoint;
use super::error::{chain, ImageError};
use super::manifest::ACCEPTED;
use super::reference::ImageName;
use super::token;
use super::types::RegistryAuth;
use crate::deadlines::{REGISTRY_CONNECT, REGISTRY_READ};

/// Largest `ca_file` read: a bundle of roots, not a data file.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// One pull's connection to one endpoint. A client per pull, because
/// oci-client keeps the first credentials it sees for a registry, and two
/// pods may pull from the same registry with different secrets.
pub struct Registry {
    client: Client,
    auth: oci_client::secrets::RegistryAuth,
    endpoint: Endpoint,
}

impl Registry {
    /// Sets up a client for `endpoint` with its host's TLS settings, and
    /// exchanges an identity token for an access token (for
    /// `name`'s repository). No request is made otherwise.
    pub async fn connect(endpoint: &Endpoint, name: &ImageName) -> Result<Registry, ImageError> {
        let setup = |detail: String| ImageError::EndpointSetup {
            endpoint: endpoint.to_string(),
            detail,
        };
        let ca = match &endpoint.tls.ca_file {
            Some(path) => read_ca_file(path).map_err(setup)?,
            None => Vec::new(),
        };
        let config = ClientConfig {
            protocol: if endpoint.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: ca
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            accept_invalid_certificates: endpoint.tls.skip_verify,
            connect_timeout: Some(REGISTRY_CONNECT),
            read_timeout: Some(REGISTRY_READ),
            // We resolve indexes ourselves (always linux/amd64).
            platform_resolver: None,
            ..Default::default()
        };
        // Client::new would fall back to a default client (other roots, no
        // skip_verify) on a bad certificate; try_from reports it.
        let client = without_panic(|| Client::try_from(config))
            .map_err(setup)?
            .map_err(|e| setup(chain(&e)))?;
        let auth = match &endpoint.auth {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer(token) => oci_client::secrets::RegistryAuth::Bearer(token.clone()),
            RegistryAuth::IdentityToken(refresh) => {
                let limits = token::LIMITS;
                let http = without_panic(|| token::client(&ca, endpoint.tls.skip_verify, &limits))
                    .map_err(setup)?
                    .map_err(setup)?;
                let repository = name.reference.repository();
                let access =
                    token::exchange(&http, &endpoint.base_url(), repository, refresh, &limits)
                        .await
                        .map_err(|source| ImageError::Token {
                            reference: name.to_string(),
                            endpoint: endpoint.to_string(),
                            source,
                        })?;
                oci_client::secrets::RegistryAuth::Bearer(access)
            }
        };
        Ok(Registry {
            client,
            auth,
            endpoint: endpoint.clone(),
        })
    }

    /// Fetches the manifest `reference` names and its digest, checked
    /// against the digest in the reference when there is one.
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, Digest), ImageError> {
        let shown = reference.whole();
        let (body, _) = self
            .client
            .pull_manifest_raw(&self.endpoint.route(reference), &self.auth, &ACCEPTED)
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
            .pull_blob_stream(&self.endpoint.route(reference), digest.as_str())
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

/// Runs a client constructor, turning a panic into an error: reqwest
/// panics when the node has no CA certificates at all, and a missing
/// package must fail the pull, not the daemon.
fn without_panic<T>(build: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)).map_err(|_| {
        "cannot set up TLS: no CA certificates found on this node \
         (install Debian's ca-certificates, or set SSL_CERT_FILE)"
            .to_string()
    })
}

/// The PEM certificates of a `ca_file`, each block on its own; errs when
/// it cannot be read, is too large or holds no certificate that parses.
/// The configuration check uses it too, so a daemon does not start on a
/// CA file that cannot work.
pub fn read_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if text.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!("{shown} is larger than {MAX_CA_FILE_BYTES} bytes"));
    }
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(format!("{shown}: a certificate has no {END} line"));
        };
        let block = &rest[start..start + len + END.len()];
        if !is_der_certificate(&block[BEGIN.len()..block.len() - END.len()]) {
            return Err(format!(
                "{shown}: certificate {} does not parse (not base64 of a DER certificate)",
                certs.len() + 1
            ));
        }
        certs.push(format!("{block}\n").into_bytes());
        rest = &rest[start + len + END.len()..];
    }
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate ({BEGIN})"));
    }
    Ok(certs)
}

/// Whether a PEM body is base64 of a DER SEQUENCE: the TLS library only
/// parses roots when a client is built, too late for the config check.
fn is_der_certificate(body: &str) -> bool {
    use base64::Engine;
    let text: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(text);
    matches!(der.as_deref(), Ok([0x30, _, ..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(read_ca_file(&missing).unwrap_err().contains("cannot read"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(read_ca_file(&empty)
            .unwrap_err()
            .contains("no PEM certificate"));
        let open = dir.path().join("open.pem");
        std::fs::write(&open, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        assert!(read_ca_file(&open).unwrap_err().contains("END CERTIFICATE"));
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_ca_file(&bad).unwrap_err().contains("does not parse"));
        // A bundle: each certificate on its own.
        let pem = |name: &str| {
            rcgen::generate_simple_self_signed(vec![name.to_string()])
                .unwrap()
                .cert
                .pem()
        };
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("# roots\n{}\n{}", pem("a"), pem("b"))).unwrap();
        let certs = read_ca_file(&bundle).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs
            .iter()
            .all(|c| c.starts_with(b"-----BEGIN CERTIFICATE-----")));
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (MAX_CA_FILE_BYTES + 1) as usize]).unwrap();
        assert!(read_ca_file(&big).unwrap_err().contains("larger"));
    }
}
