//! `[registry]`: plain-HTTP registries, mirrors and per-host settings, and
//! their translation into the image store's [`RegistryOptions`]. The
//! translation is the check: validation runs it, so the daemon starts only
//! on a section it can use (CA files included: read and parsed).
//!
//! ```toml
//! [registry]
//! insecure = ["127.0.0.1:5000"]
//!
//! [registry.mirrors."registry.k8s.io"]
//! endpoints = ["http://127.0.0.1:5001", "https://mirror.example:8443"]
//! skip_upstream = false
//!
//! [registry.hosts."mirror.example:8443"]
//! ca_file = "/etc/husk/certs/mirror-ca.pem"
//! username = "puller"
//! password = "..."
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::image::{
    check_host, read_ca_file, EndpointUrl, HostOptions, MirrorOptions, RegistryAuth,
    RegistryOptions, TlsOptions,
};

/// Image registry access.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Upstream host as in image names (`docker.io` for Docker Hub names)
    /// → the mirrors tried before it.
    pub mirrors: BTreeMap<String, MirrorConfig>,
    /// `host[:port]` → TLS settings and credentials, for mirrors and
    /// upstreams alike.
    pub hosts: BTreeMap<String, HostConfig>,
}

/// `[registry.mirrors."<upstream host>"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// `http://host[:port]` or `https://host[:port]`, tried in order.
    pub endpoints: Vec<String>,
    /// Never fall back to the upstream host itself.
    pub skip_upstream: bool,
}

/// `[registry.hosts."<host[:port]>"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Extra trusted root certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) and its key: parsed, but refused until
    /// the registry client can present one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub skip_verify: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A bearer token, instead of username and password.
    pub token: Option<Secret>,
}

/// A password or token from the file: never shown by `Debug`, which the
/// daemon logs the configuration with.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

impl RegistryConfig {
    /// The image store's options for this section, or the first value it
    /// cannot use, named as in the file.
    pub fn options(&self) -> Result<RegistryOptions, ConfigError> {
        for entry in &self.insecure {
            check_key("registry.insecure", entry)?;
        }
        let mut mirrors = BTreeMap::new();
        for (upstream, mirror) in &self.mirrors {
            let field = format!("registry.mirrors.{}", toml_key(upstream));
            check_key(&field, upstream)?;
            mirrors.insert(upstream.clone(), mirror.options(&field)?);
        }
        let mut hosts = BTreeMap::new();
        for (host, settings) in &self.hosts {
            let field = format!("registry.hosts.{}", toml_key(host));
            check_key(&field, host)?;
            hosts.insert(host.clone(), settings.options(&field)?);
        }
        Ok(RegistryOptions {
            insecure: self.insecure.clone(),
            mirrors,
            hosts,
        })
    }
}

impl MirrorConfig {
    fn options(&self, field: &str) -> Result<MirrorOptions, ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                format!("{field}.endpoints"),
                "must list at least one mirror (http://host[:port] or https://host[:port])",
            ));
        }
        let mut endpoints: Vec<EndpointUrl> = Vec::new();
        for (i, text) in self.endpoints.iter().enumerate() {
            let at = format!("{field}.endpoints[{i}]");
            let url = EndpointUrl::parse(text).map_err(|why| ConfigError::invalid(&at, why))?;
            if endpoints.contains(&url) {
                return Err(ConfigError::invalid(
                    at,
                    format!("{text:?} is listed twice"),
                ));
            }
            endpoints.push(url);
        }
        Ok(MirrorOptions {
            endpoints,
            skip_upstream: self.skip_upstream,
        })
    }
}

impl HostConfig {
    fn options(&self, field: &str) -> Result<HostOptions, ConfigError> {
        let at = |key: &str| format!("{field}.{key}");
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path {
                check_absolute_file(&at(key), path)?;
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    at("key_file"),
                    "missing: cert_file needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    at("cert_file"),
                    "missing: key_file is the key of a cert_file",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    at("cert_file"),
                    "client certificates are not supported yet: the registry client \
                     (oci-client 0.18) cannot present one; remove cert_file and key_file",
                ))
            }
            (None, None) => {}
        }
        if let Some(path) = &self.ca_file {
            read_ca_file(path).map_err(|why| ConfigError::invalid(at("ca_file"), why))?;
        }
        Ok(HostOptions {
            tls: TlsOptions {
                ca_file: self.ca_file.clone(),
                skip_verify: self.skip_verify,
            },
            auth: self.auth(field)?,
        })
    }

    fn auth(&self, field: &str) -> Result<RegistryAuth, ConfigError> {
        let at = |key: &str| format!("{field}.{key}");
        let empty = |key: &str| ConfigError::invalid(at(key), "must not be empty");
        match (&self.username, &self.password, &self.token) {
            (None, None, None) => Ok(RegistryAuth::Anonymous),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(ConfigError::invalid(
                at("token"),
                "use either token or username and password, not both",
            )),
            (None, None, Some(token)) if token.expose().is_empty() => Err(empty("token")),
            (None, None, Some(token)) => Ok(RegistryAuth::Bearer(token.expose().to_string())),
            (Some(_), None, None) => Err(ConfigError::invalid(
                at("password"),
                "missing: username is set without a password",
            )),
            (None, Some(_), None) => Err(ConfigError::invalid(
                at("username"),
                "missing: password is set without a username",
            )),
            (Some(user), Some(_), None) if user.is_empty() => Err(empty("username")),
            (Some(user), Some(password), None) => Ok(RegistryAuth::Basic {
                username: user.clone(),
                password: password.expose().to_string(),
            }),
        }
    }
}

/// A registry host key or `insecure` entry: `host[:port]`, matched as
/// written (as in image names).
fn check_key(field: &str, entry: &str) -> Result<(), ConfigError> {
    check_host(entry).map_err(|why| ConfigError::invalid(field, format!("{entry:?} {why}")))
}

/// An absolute path to a readable regular file.
fn check_absolute_file(field: &str, path: &Path) -> Result<(), ConfigError> {
    if !path.is_absolute() {
        return Err(ConfigError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::invalid(
            field,
            format!("{path:?} is not a file"),
        )),
        Err(e) => Err(ConfigError::invalid(
            field,
            format!("cannot read {path:?}: {e}"),
        )),
    }
}

/// A key as TOML writes it in a dotted path: bare when it can be,
/// quoted otherwise (`"registry.k8s.io"`).
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}
