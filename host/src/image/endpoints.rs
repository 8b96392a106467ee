//! Where a pull goes: the mirrors configured for the image's registry, in
//! order, then the registry itself (unless `skip_upstream`), each with the
//! TLS settings and credentials of its host. Pure: no I/O, so the whole
//! choice is unit-tested here.

use std::fmt;

use oci_client::Reference;

use super::types::{RegistryAuth, RegistryOptions, TlsOptions};

/// A mirror as configured: `http://host[:port]` or `https://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// `http://`: reached over plain HTTP.
    pub plain_http: bool,
    /// `host[:port]` as dialed, and as `[registry.hosts]` keys name it.
    pub host: String,
}

impl EndpointUrl {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed). A path,
    /// query or userinfo is refused rather than ignored: the image's
    /// repository path is always kept, and credentials belong in
    /// `[registry.hosts]`, not in a URL that ends up in logs.
    pub fn parse(text: &str) -> Result<EndpointUrl, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "{text:?} is not a URL (http://host[:port] or https://host[:port])"
            ));
        };
        let plain_http = match scheme.to_ascii_lowercase().as_str() {
            "http" => true,
            "https" => false,
            _ => return Err(format!("{text:?}: the scheme must be http or https")),
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.contains('@') {
            return Err(format!(
                "{text:?}: no user info in the URL; put credentials in [registry.hosts]"
            ));
        }
        if host.contains(['/', '?', '#']) {
            return Err(format!(
                "{text:?}: no path, query or fragment (the image's repository path is kept)"
            ));
        }
        check_host(host).map_err(|why| format!("{text:?}: {why}"))?;
        Ok(EndpointUrl {
            plain_http,
            host: host.to_string(),
        })
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}", self.host)
    }
}

/// Checks `host` or `host:port`, where host is a DNS name, an IPv4 address
/// or a bracketed IPv6 address: no scheme, no path. The reason names what
/// is wrong, for the config's error.
pub fn check_host(entry: &str) -> Result<(), String> {
    if entry.contains(['/', '?', '#', '@']) {
        return Err("is not host[:port] (no scheme, path or user info)".into());
    }
    let port = if let Some(rest) = entry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("has no closing ']'".into());
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("is not a valid [IPv6] address".into());
        }
        match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err("is not host[:port]".into()),
            },
        }
    } else {
        let (host, port) = match entry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(
                "is not host[:port] (no scheme or path; host a DNS name or address)".into(),
            );
        }
        port
    };
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err("has a port outside 1-65535".into());
        }
    }
    Ok(())
}

/// Whether an endpoint is a mirror or the image's own registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Mirror,
    Upstream,
}

/// One place a pull may be served from, with everything needed to reach
/// it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host[:port]` as dialed (`index.docker.io` for Docker Hub names).
    pub host: String,
    pub plain_http: bool,
    pub role: Role,
    /// The upstream gets the pull's own credentials; a mirror those of its
    /// `[registry.hosts]` entry.
    pub auth: RegistryAuth,
    /// TLS settings of the host's `[registry.hosts]` entry.
    pub tls: TlsOptions,
}

impl Endpoint {
    /// `scheme://host[:port]`, where `/v2/` lives.
    pub fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }

    /// `reference` as this endpoint serves it: the same repository, tag
    /// and digest, on this endpoint's host.
    pub fn route(&self, reference: &Reference) -> Reference {
        if self.role == Role::Upstream {
            return reference.clone();
        }
        let (host, repo) = (self.host.clone(), reference.repository().to_string());
        match (reference.tag(), reference.digest()) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(host, repo, tag.into(), digest.into())
            }
            (None, Some(digest)) => Reference::with_digest(host, repo, digest.into()),
            (tag, None) => Reference::with_tag(host, repo, tag.unwrap_or("latest").into()),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Mirror => "mirror",
            Role::Upstream => "upstream",
        };
        write!(f, "{} ({role})", self.base_url())
    }
}

/// The endpoints one pull tries, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub endpoints: Vec<Endpoint>,
    /// The upstream host, when `skip_upstream` left it out.
    pub skipped_upstream: Option<String>,
}

impl Route {
    /// Whether a failure should be reported as it is: a pull that only
    /// ever goes to the image's own registry keeps today's errors.
    pub fn upstream_only(&self) -> bool {
        self.skipped_upstream.is_none() && self.endpoints.iter().all(|e| e.role == Role::Upstream)
    }
}

/// The endpoints for `reference`: its registry's mirrors in the configured
/// order, then the registry itself unless the mirror entry skips it.
/// `auth` is the pull's own credentials (CRI's AuthConfig): kubelet picks
/// them for the image's registry, so they only ever go to the upstream.
pub fn resolve(options: &RegistryOptions, reference: &Reference, auth: RegistryAuth) -> Route {
    let upstream_name = reference.registry();
    let upstream_host = reference.resolve_registry();
    let mirror = options.mirrors.get(upstream_name);
    let mut endpoints: Vec<Endpoint> = mirror
        .map(|m| m.endpoints.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|url| {
            let host = options.hosts.get(&url.host).cloned().unwrap_or_default();
            Endpoint {
                host: url.host.clone(),
                plain_http: url.plain_http,
                role: Role::Mirror,
                auth: host.auth,
                tls: host.tls,
            }
        })
        .collect();
    let skip = mirror.is_some_and(|m| m.skip_upstream);
    if !skip {
        // `[registry.hosts]` is keyed as image names are (`docker.io`);
        // the host dialed (`index.docker.io`) is accepted too.
        let host = options
            .hosts
            .get(upstream_name)
            .or_else(|| options.hosts.get(upstream_host))
            .cloned()
            .unwrap_or_default();
        let auth = match auth {
            RegistryAuth::Anonymous => host.auth,
            given => given,
        };
        let listed = |name: &str| options.insecure.iter().any(|i| i == name);
        endpoints.push(Endpoint {
            host: upstream_host.to_string(),
            plain_http: listed(upstream_host) || listed(upstream_name),
            role: Role::Upstream,
            auth,
            tls: host.tls,
        });
    }
    Route {
        endpoints,
        skipped_upstream: skip.then(|| upstream_host.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::image::types::{HostOptions, MirrorOptions};

    fn url(text: &str) -> EndpointUrl {
        EndpointUrl::parse(text).unwrap()
    }

    fn basic(user: &str) -> RegistryAuth {
        RegistryAuth::Basic {
            username: user.into(),
            password: "secret".into(),
        }
    }

    fn user_of(auth: &RegistryAuth) -> Option<&str> {
        match auth {
            RegistryAuth::Basic { username, .. } => Some(username),
            _ => None,
        }
    }

    fn options() -> RegistryOptions {
        let mut o = RegistryOptions {
            insecure: vec!["127.0.0.1:5000".into()],
            ..Default::default()
        };
        o.mirrors.insert(
            "registry.k8s.io".into(),
            MirrorOptions {
                endpoints: vec![
                    url("http://127.0.0.1:5001"),
                    url("https://mirror.example:8443/"),
                ],
                skip_upstream: false,
            },
        );
        o.hosts.insert(
            "mirror.example:8443".into(),
            HostOptions {
                tls: TlsOptions {
                    ca_file: Some(PathBuf::from("/etc/husk/ca.pem")),
                    skip_verify: false,
                },
                auth: basic("mirror-user"),
            },
        );
        o.hosts.insert(
            "registry.k8s.io".into(),
            HostOptions {
                auth: basic("config-user"),
                ..Default::default()
            },
        );
        o
    }

    fn reference(text: &str) -> Reference {
        text.parse().unwrap()
    }

    #[test]
    fn endpoint_urls_parse() {
        assert_eq!(
            url("http://127.0.0.1:5000"),
            EndpointUrl {
                plain_http: true,
                host: "127.0.0.1:5000".into()
            }
        );
        assert_eq!(url("HTTPS://mirror.example/").host, "mirror.example");
        assert!(!url("https://[::1]:8443").plain_http);
        assert_eq!(url("https://[::1]:8443").to_string(), "https://[::1]:8443");
        for bad in [
            "127.0.0.1:5000",
            "ftp://host",
            "http://",
            "http://host/v2",
            "http://host:5000/path/",
            "http://host?x=1",
            "http://host#frag",
            "http://user:pw@host",
            "http://host:0",
            "http://host:99999",
            "http://-bad",
            "http://[::1",
        ] {
            let e = EndpointUrl::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(EndpointUrl::parse("http://u@h")
            .unwrap_err()
            .contains("[registry.hosts]"));
    }

    #[test]
    fn mirrors_come_first_in_order_then_the_upstream() {
        let r = resolve(
            &options(),
            &reference("registry.k8s.io/pause:3.10"),
            RegistryAuth::Anonymous,
        );
        let shown: Vec<String> = r.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "http://127.0.0.1:5001 (mirror)",
                "https://mirror.example:8443 (mirror)",
                "https://registry.k8s.io (upstream)",
            ]
        );
        assert!(!r.upstream_only());
        assert_eq!(r.skipped_upstream, None);
        // Per-host settings follow the host.
        assert_eq!(r.endpoints[0].tls.ca_file, None);
        assert_eq!(
            r.endpoints[1].tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/husk/ca.pem"))
        );
    }

    #[test]
    fn the_pulls_credentials_go_to_the_upstream_only() {
        let r = resolve(
            &options(),
            &reference("registry.k8s.io/pause:3.10"),
            basic("cri-user"),
        );
        let users: Vec<Option<&str>> = r.endpoints.iter().map(|e| user_of(&e.auth)).collect();
        assert_eq!(users, [None, Some("mirror-user"), Some("cri-user")]);
        // Without CRI credentials the upstream's configured ones are used.
        let r = resolve(
            &options(),
            &reference("registry.k8s.io/pause:3.10"),
            RegistryAuth::Anonymous,
        );
        assert_eq!(user_of(&r.endpoints[2].auth), Some("config-user"));
    }

    #[test]
    fn skip_upstream_leaves_only_the_mirrors() {
        let mut o = options();
        o.mirrors.get_mut("registry.k8s.io").unwrap().skip_upstream = true;
        let r = resolve(&o, &reference("registry.k8s.io/pause:3.10"), basic("cri"));
        assert_eq!(r.endpoints.len(), 2);
        assert!(r.endpoints.iter().all(|e| e.role == Role::Mirror));
        assert!(r.endpoints.iter().all(|e| user_of(&e.auth) != Some("cri")));
        assert_eq!(r.skipped_upstream.as_deref(), Some("registry.k8s.io"));
        assert!(!r.upstream_only());
    }

    #[test]
    fn other_registries_keep_todays_rule() {
        let o = options();
        let r = resolve(
            &o,
            &reference("127.0.0.1:5000/a/b:c"),
            RegistryAuth::Anonymous,
        );
        assert!(r.upstream_only());
        assert_eq!(r.endpoints.len(), 1);
        assert!(r.endpoints[0].plain_http, "listed in insecure");
        let r = resolve(&o, &reference("quay.io/a/b:c"), RegistryAuth::Anonymous);
        assert!(!r.endpoints[0].plain_http);
        assert!(matches!(r.endpoints[0].auth, RegistryAuth::Anonymous));
        // Docker Hub names dial index.docker.io; the key is docker.io.
        let r = resolve(&o, &reference("busybox"), RegistryAuth::Anonymous);
        assert_eq!(
            r.endpoints[0].to_string(),
            "https://index.docker.io (upstream)"
        );
    }

    #[test]
    fn docker_hub_mirrors_keep_the_library_path() {
        let mut o = RegistryOptions::default();
        o.mirrors.insert(
            "docker.io".into(),
            MirrorOptions {
                endpoints: vec![url("http://127.0.0.1:5001")],
                skip_upstream: false,
            },
        );
        let busybox = reference("busybox");
        let r = resolve(&o, &busybox, RegistryAuth::Anonymous);
        let routed = r.endpoints[0].route(&busybox);
        assert_eq!(routed.whole(), "127.0.0.1:5001/library/busybox:latest");
        assert_eq!(routed.resolve_registry(), "127.0.0.1:5001");
        assert_eq!(r.endpoints[1].route(&busybox).whole(), busybox.whole());
        let hex = "ab".repeat(32);
        let pinned = reference(&format!("docker.io/library/busybox:1.36@sha256:{hex}"));
        assert_eq!(
            r.endpoints[0].route(&pinned).whole(),
            format!("127.0.0.1:5001/library/busybox:1.36@sha256:{hex}")
        );
        let by_digest = pinned.clone_with_digest(format!("sha256:{hex}"));
        assert_eq!(
            r.endpoints[0].route(&by_digest).whole(),
            format!("127.0.0.1:5001/library/busybox@sha256:{hex}")
        );
    }

    #[test]
    fn hosts_are_checked() {
        for good in [
            "registry.k8s.io",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[fe80::1]",
            "localhost",
        ] {
            check_host(good).unwrap();
        }
        for bad in [
            "",
            "host:",
            "host:0",
            "-bad.example",
            "[::1",
            "[nothex]:5000",
            "[::1]5000",
            "a/b",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
