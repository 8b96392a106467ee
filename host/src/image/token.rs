//! Exchanging an OAuth2 refresh token (CRI `identity_token`, Docker's
//! `identitytoken`) for a registry access token. oci-client only fetches
//! anonymous and basic-auth tokens, and no crate does this exchange, so it
//! is done here, as the distribution token spec describes: ask `/v2/` for
//! its `WWW-Authenticate: Bearer` challenge, POST the refresh token to the
//! challenge's realm, pull with the `access_token` it answers.
//!
//! Everything here comes from a registry, so every wait and every body is
//! bounded ([`Limits`]).

use std::time::Duration;

use super::error::chain;

/// How long and how much a token exchange may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole exchange, both requests included.
    pub timeout: Duration,
    /// Largest body read from the token service.
    pub max_body: usize,
}

/// What pulls use.
pub const LIMITS: Limits = Limits {
    timeout: crate::deadlines::REGISTRY_TOKEN,
    max_body: 64 << 10,
};

/// The OAuth2 client id sent with the refresh token.
const CLIENT_ID: &str = "husk";

/// Why no access token was obtained.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A request could not be sent or its answer not read.
    #[error("request to {url} failed: {}", chain(source))]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry does not use bearer tokens: it cannot take an
    /// identity token.
    #[error("{url} asks for no bearer token (no WWW-Authenticate: Bearer challenge, HTTP {status}), so an identity token cannot be used there")]
    NoChallenge { url: String, status: u16 },
    /// A challenge that does not parse or lacks the realm.
    #[error("bad WWW-Authenticate challenge from {url}: {reason}")]
    BadChallenge { url: String, reason: String },
    /// The realm is not a URL we send a refresh token to.
    #[error("token realm {realm:?}: {reason}")]
    BadRealm { realm: String, reason: String },
    /// The token service refused the refresh token.
    #[error("{realm} refused the identity token: HTTP {status}: {body}")]
    Refused {
        realm: String,
        status: u16,
        body: String,
    },
    /// An answer larger than [`Limits::max_body`].
    #[error("the answer of {url} is larger than {max} bytes")]
    TooLarge { url: String, max: usize },
    /// An answer that is not the token JSON.
    #[error("bad answer from {realm}: {reason}")]
    BadAnswer { realm: String, reason: String },
    /// The exchange took longer than [`Limits::timeout`].
    #[error("no access token within {0:?}")]
    Timeout(Duration),
}

impl TokenError {
    /// A refusal of the credentials (→ Unauthenticated), rather than a
    /// registry that failed or could not be reached.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::NoChallenge { .. } | Self::BadRealm { .. } => true,
            Self::Refused { status, .. } => (400..500).contains(status) && *status != 429,
            _ => false,
        }
    }
}

/// An HTTP client for the exchange, trusting `ca` (PEM certificates)
/// besides the node's roots. Redirects are not followed: the refresh token
/// goes to the realm the registry named and nowhere else.
pub fn client(
    ca: &[Vec<u8>],
    skip_verify: bool,
    limits: &Limits,
) -> Result<reqwest::Client, String> {
    let mut roots = Vec::new();
    for pem in ca {
        roots.push(reqwest::Certificate::from_pem(pem).map_err(|e| chain(&e))?);
    }
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(limits.timeout)
        .connect_timeout(limits.timeout)
        .tls_certs_merge(roots)
        .danger_accept_invalid_certs(skip_verify)
        .user_agent(concat!("husk/", env!("CARGO_PKG_VERSION")));
    builder.build().map_err(|e| chain(&e))
}

/// Exchanges `refresh_token` for an access token that may pull
/// `repository` from the registry at `base` (`scheme://host[:port]`).
pub async fn exchange(
    client: &reqwest::Client,
    base: &str,
    repository: &str,
    refresh_token: &str,
    limits: &Limits,
) -> Result<String, TokenError> {
    let work = exchange_unbounded(client, base, repository, refresh_token, limits);
    tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| TokenError::Timeout(limits.timeout))?
}

async fn exchange_unbounded(
    client: &reqwest::Client,
    base: &str,
    repository: &str,
    refresh_token: &str,
    limits: &Limits,
) -> Result<String, TokenError> {
    let url = format!("{base}/v2/");
    let request = |source| TokenError::Request {
        url: url.clone(),
        source,
    };
    let answer = client.get(&url).send().await.map_err(request)?;
    let status = answer.status().as_u16();
    let mut challenge = None;
    for value in answer.headers().get_all(reqwest::header::WWW_AUTHENTICATE) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let bad = |reason| TokenError::BadChallenge {
            url: url.clone(),
            reason,
        };
        if let Some(c) = bearer_challenge(&text).map_err(bad)? {
            challenge = Some(c);
            break;
        }
    }
    // Read (bounded) and drop the body so the connection is reused.
    read_bounded(answer, &url, limits.max_body).await?;
    let Some(challenge) = challenge else {
        return Err(TokenError::NoChallenge { url, status });
    };
    let realm = check_realm(&challenge.realm, base.starts_with("http://"))?;
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT_ID),
        ("scope", &scope),
    ];
    if let Some(service) = &challenge.service {
        form.push(("service", service));
    }
    let shown = realm.to_string();
    let answer = client
        .post(realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form_body(&form))
        .send()
        .await
        .map_err(|source| TokenError::Request {
            url: shown.clone(),
            source,
        })?;
    let status = answer.status();
    let body = read_bounded(answer, &shown, limits.max_body).await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(TokenError::Refused {
            realm: shown,
            status: status.as_u16(),
            body: text.chars().take(200).collect(),
        });
    }
    access_token(&body).map_err(|reason| TokenError::BadAnswer {
        realm: shown,
        reason,
    })
}

/// The token from the service's JSON answer: `access_token` (OAuth2), or
/// `token` (the older distribution name).
fn access_token(body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        access_token: String,
        #[serde(default)]
        token: String,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    [answer.access_token, answer.token]
        .into_iter()
        .find(|t| !t.is_empty())
        .ok_or_else(|| "neither access_token nor token in the answer".to_string())
}

/// Reads a whole body, refusing more than `max` bytes.
async fn read_bounded(
    mut answer: reqwest::Response,
    url: &str,
    max: usize,
) -> Result<Vec<u8>, TokenError> {
    let too_large = || TokenError::TooLarge {
        url: url.to_string(),
        max,
    };
    if answer.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|source| TokenError::Request {
        url: url.to_string(),
        source,
    })? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The realm as a URL the refresh token may go to: HTTPS, or plain HTTP
/// only when the registry itself is plain HTTP (a token must not leave an
/// HTTPS registry in the clear).
fn check_realm(realm: &str, registry_is_plain: bool) -> Result<reqwest::Url, TokenError> {
    let bad = |reason: &str| TokenError::BadRealm {
        realm: realm.to_string(),
        reason: reason.to_string(),
    };
    let url = reqwest::Url::parse(realm).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if registry_is_plain => Ok(url),
        "http" => Err(bad(
            "plain HTTP for a registry on HTTPS; the refresh token is not sent in the clear",
        )),
        _ => Err(bad("not an http(s) URL")),
    }
}

/// `application/x-www-form-urlencoded`: unreserved bytes as they are,
/// space as `+`, everything else `%XX`.
fn form_body(fields: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, text: &str) {
        for b in text.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, key);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// The parts of a Bearer challenge the exchange needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// The Bearer challenge of one `WWW-Authenticate` value (which may hold
/// several challenges, RFC 7235: `Basic realm="x", Bearer realm="y"`);
/// `None` when there is none. A Bearer challenge without a realm is an
/// error.
fn bearer_challenge(header: &str) -> Result<Option<BearerChallenge>, String> {
    for (scheme, params) in challenges(header)? {
        if !scheme.eq_ignore_ascii_case("bearer") {
            continue;
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm")
            .filter(|r| !r.is_empty())
            .ok_or("the Bearer challenge has no realm")?;
        return Ok(Some(BearerChallenge {
            realm,
            service: get("service").filter(|s| !s.is_empty()),
        }));
    }
    Ok(None)
}

type Challenge = (String, Vec<(String, String)>);

/// Splits a header value into challenges: a scheme, then `name=value`
/// parameters (values a token or a quoted string) up to the next scheme.
fn challenges(header: &str) -> Result<Vec<Challenge>, String> {
    let mut p = Parser {
        rest: header.as_bytes(),
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|b| b == b' ' || b == b'\t' || b == b',');
        if p.rest.is_empty() {
            return Ok(out);
        }
        let scheme = p.token();
        if scheme.is_empty() {
            return Err(format!("unexpected {:?}", p.rest[0] as char));
        }
        let mut params = Vec::new();
        p.skip(|b| b == b' ' || b == b'\t');
        if p.token68() {
            // `Negotiate abc==`: not the parameters the Bearer scheme uses.
            out.push((scheme, params));
            continue;
        }
        loop {
            p.skip(|b| b == b' ' || b == b'\t');
            let saved = p.rest;
            let name = p.token();
            if name.is_empty() {
                break;
            }
            p.skip(|b| b == b' ' || b == b'\t');
            if !p.eat(b'=') {
                // The next challenge's scheme, not a parameter.
                p.rest = saved;
                break;
            }
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.eat(b'"') { p.quoted()? } else { p.token() };
            params.push((name, value));
            p.skip(|b| b == b' ' || b == b'\t');
            if !p.eat(b',') {
                break;
            }
        }
        out.push((scheme, params));
    }
}

/// A cursor over a header value.
struct Parser<'a> {
    rest: &'a [u8],
}

impl Parser<'_> {
    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while let Some((&b, rest)) = self.rest.split_first() {
            if !what(b) {
                break;
            }
            self.rest = rest;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == b => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    /// RFC 7230 `token` characters.
    fn token(&mut self) -> String {
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b);
        let len = self.rest.iter().take_while(|&&b| is_tchar(b)).count();
        let (token, rest) = self.rest.split_at(len);
        self.rest = rest;
        String::from_utf8_lossy(token).into_owned()
    }

    /// Eats a `token68` (RFC 7235) if one is next: its characters, `=`
    /// padding, then the end or a comma.
    fn token68(&mut self) -> bool {
        let is_char = |b: &&u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
        let len = self.rest.iter().take_while(is_char).count();
        let pad = self.rest[len..].iter().take_while(|&&b| b == b'=').count();
        let after = &self.rest[len + pad..];
        let next = after.iter().find(|&&b| b != b' ' && b != b'\t');
        if len == 0 || !matches!(next, None | Some(b',')) {
            return false;
        }
        self.rest = after;
        true
    }

    /// The rest of a quoted string whose opening quote was eaten.
    fn quoted(&mut self) -> Result<String, String> {
        let mut value = Vec::new();
        loop {
            let Some((&b, rest)) = self.rest.split_first() else {
                return Err("unterminated quoted string".into());
            };
            self.rest = rest;
            match b {
                b'"' => return Ok(String::from_utf8_lossy(&value).into_owned()),
                b'\\' => {
                    let Some((&escaped, rest)) = self.rest.split_first() else {
                        return Err("unterminated quoted string".into());
                    };
                    self.rest = rest;
                    value.push(escaped);
                }
                _ => value.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn challenges_parse() {
        let c = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c,
            BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            }
        );
        // Several challenges, odd spacing and case, escapes, token values.
        let c = bearer_challenge(
            r#"Basic realm="a, \"quoted\" realm" , bearer  service = reg.example ,realm="https://t.example/tok?x=1""#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.realm, "https://t.example/tok?x=1");
        assert_eq!(c.service.as_deref(), Some("reg.example"));
        let all = challenges(r#"Basic realm="a, \"quoted\" realm", Bearer realm="x""#).unwrap();
        assert_eq!(all[0].1[0].1, r#"a, "quoted" realm"#);
        assert_eq!(all.len(), 2);
        // No service is fine; no Bearer challenge is None.
        let c = bearer_challenge(r#"Bearer realm="https://t/""#)
            .unwrap()
            .unwrap();
        assert_eq!(c.service, None);
        assert_eq!(bearer_challenge(r#"Basic realm="registry""#).unwrap(), None);
        assert_eq!(bearer_challenge("").unwrap(), None);
        // A token68 scheme before it does not confuse the parser.
        let c = bearer_challenge(r#"Negotiate abc==, Bearer realm="https://t/""#).unwrap();
        assert_eq!(c.unwrap().realm, "https://t/");
        // Errors.
        assert!(bearer_challenge(r#"Bearer service="s""#)
            .unwrap_err()
            .contains("realm"));
        assert!(bearer_challenge(r#"Bearer realm="open"#)
            .unwrap_err()
            .contains("unterminated"));
        assert!(bearer_challenge(r#"Bearer realm="x\"#).is_err());
        assert!(challenges("\u{1}").is_err());
    }

    #[test]
    fn realms_keep_the_token_off_plain_http() {
        check_realm("https://auth.example/token", false).unwrap();
        check_realm("http://127.0.0.1:5000/token", true).unwrap();
        let e = check_realm("http://auth.example/token", false).unwrap_err();
        assert!(e.is_refusal());
        assert!(e.to_string().contains("not sent in the clear"), "{e}");
        assert!(check_realm("file:///etc/passwd", true).is_err());
        assert!(check_realm("not a url", true).is_err());
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form_body(&[
                ("a", "b c+d"),
                ("scope", "repository:x/y:pull"),
                ("t", "é&=")
            ]),
            "a=b+c%2Bd&scope=repository%3Ax%2Fy%3Apull&t=%C3%A9%26%3D"
        );
    }

    #[test]
    fn answers_name_the_token() {
        assert_eq!(
            access_token(br#"{"access_token":"a","token":"b"}"#).unwrap(),
            "a"
        );
        assert_eq!(
            access_token(br#"{"token":"b","expires_in":300}"#).unwrap(),
            "b"
        );
        assert!(access_token(br#"{"expires_in":300}"#).is_err());
        assert!(access_token(b"<html>").is_err());
    }

    /// What a fake registry answers a request (method, path, body) with.
    type Handler = Arc<dyn Fn(&str, &str, &str) -> Option<String> + Send + Sync>;

    /// A plain-HTTP server answering with `handler`, one request per
    /// connection; `None` from the handler: never answer. Returns the
    /// base URL and every request body seen.
    async fn fake_registry(handler: Handler) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (realm_base, log) = (base.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (handler, log, realm_base) = (handler.clone(), log.clone(), realm_base.clone());
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    let (head, body) = loop {
                        let n = conn.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&data).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break (head.to_string(), body.to_string());
                            }
                        }
                    };
                    let mut words = head.split(' ');
                    let (method, path) = (words.next().unwrap(), words.next().unwrap());
                    log.lock().unwrap().push(body.clone());
                    let Some(answer) = handler(method, path, &body) else {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    };
                    let answer = answer.replace("{base}", &realm_base);
                    conn.write_all(answer.as_bytes()).await.unwrap();
                    let _ = conn.shutdown().await;
                });
            }
        });
        (base, seen)
    }

    fn http(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    /// A registry whose token service answers `token_answer`.
    fn registry_with(token_answer: String) -> Handler {
        Arc::new(move |method, path, _| {
            Some(match (method, path) {
                ("GET", "/v2/") => http(
                    "401 Unauthorized",
                    "WWW-Authenticate: Bearer realm=\"{base}/token\",service=\"test-registry\"\r\n",
                    "{}",
                ),
                ("POST", "/token") => token_answer.clone(),
                _ => http("404 Not Found", "", ""),
            })
        })
    }

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(5),
            max_body: 1024,
        }
    }

    async fn run(base: &str, limits: Limits) -> Result<String, TokenError> {
        let client = client(&[], false, &limits).unwrap();
        exchange(&client, base, "husk-test/busybox", "r3fresh+token", &limits).await
    }

    #[tokio::test]
    async fn a_refresh_token_is_exchanged_for_an_access_token() {
        let answer = http(
            "200 OK",
            "",
            r#"{"access_token":"acc3ss","expires_in":300}"#,
        );
        let (base, seen) = fake_registry(registry_with(answer)).await;
        assert_eq!(run(&base, limits()).await.unwrap(), "acc3ss");
        let bodies = seen.lock().unwrap().clone();
        assert_eq!(
            bodies[1],
            "grant_type=refresh_token&refresh_token=r3fresh%2Btoken&client_id=husk\
             &scope=repository%3Ahusk-test%2Fbusybox%3Apull&service=test-registry"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_a_refusal() {
        let answer = http("401 Unauthorized", "", r#"{"error":"invalid_grant"}"#);
        let (base, _) = fake_registry(registry_with(answer)).await;
        let e = run(&base, limits()).await.unwrap_err();
        assert!(matches!(e, TokenError::Refused { status: 401, .. }), "{e}");
        assert!(e.is_refusal());
        assert!(e.to_string().contains("invalid_grant"), "{e}");
    }

    #[tokio::test]
    async fn a_registry_without_a_bearer_challenge_cannot_take_one() {
        let handler: Handler = Arc::new(|_, _, _| Some(http("200 OK", "", "{}")));
        let (base, _) = fake_registry(handler).await;
        let e = run(&base, limits()).await.unwrap_err();
        assert!(
            matches!(e, TokenError::NoChallenge { status: 200, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn answers_are_bounded_in_size() {
        let big = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(2000));
        let (base, _) = fake_registry(registry_with(http("200 OK", "", &big))).await;
        let e = run(&base, limits()).await.unwrap_err();
        assert!(matches!(e, TokenError::TooLarge { max: 1024, .. }), "{e}");
        // Without a Content-Length too.
        let chunked = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{big}");
        let (base, _) = fake_registry(registry_with(chunked)).await;
        let e = run(&base, limits()).await.unwrap_err();
        assert!(matches!(e, TokenError::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_silent_registry_times_out() {
        let handler: Handler = Arc::new(|_, _, _| None);
        let (base, _) = fake_registry(handler).await;
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..limits()
        };
        let started = std::time::Instant::now();
        let e = run(&base, limits).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!e.is_refusal(), "{e}");
    }
}
