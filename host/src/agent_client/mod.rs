//! Client of the guest agent API (`husk.agent.v1`): connects with retries
//! until a deadline (the guest listens only once it has booted) and bounds
//! every call with a timeout.

mod connector;

use std::error::Error as _;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_proto::agent::v1::agent_client::AgentClient as RawClient;
use husk_proto::agent::v1::{HealthRequest, ShutdownRequest};
use husk_proto::MAX_MESSAGE_SIZE;
use tonic::transport::{Channel, Endpoint};

pub use connector::AgentAddr;
use connector::Connector;

/// Default bound on one call (connecting excluded).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// One connect attempt gives up after this long: a vsock connect to a guest
/// that is not listening yet may hang instead of failing.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts, doubling up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error(
        "cannot connect to the agent at {addr} within {deadline:?} \
         ({attempts} attempts; last: {last_error})"
    )]
    Connect {
        addr: AgentAddr,
        deadline: Duration,
        attempts: u32,
        last_error: String,
    },
    #[error("agent call {call} to {addr} timed out after {timeout:?}")]
    Timeout {
        call: &'static str,
        addr: AgentAddr,
        timeout: Duration,
    },
    #[error("agent call {call} to {addr} failed: {status}")]
    Call {
        call: &'static str,
        addr: AgentAddr,
        #[source]
        status: tonic::Status,
    },
}

/// What Health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHealth {
    /// husk-agent's crate version.
    pub agent_version: String,
    /// Revision of `husk.agent.v1` the agent implements.
    pub api_version: u32,
    /// Since the agent process started.
    pub agent_uptime: Duration,
    /// Since the guest kernel booted.
    pub system_uptime: Duration,
}

/// A connected agent. Cheap to clone; calls may run concurrently.
#[derive(Debug, Clone)]
pub struct AgentClient {
    raw: RawClient<Channel>,
    addr: AgentAddr,
    call_timeout: Duration,
}

impl AgentClient {
    /// Connects to the agent in guest `cid` on vsock `port`, retrying until
    /// `deadline` has passed.
    pub async fn connect_vsock(
        cid: u32,
        port: u32,
        deadline: Duration,
    ) -> Result<Self, AgentClientError> {
        Self::connect(AgentAddr::Vsock { cid, port }, deadline).await
    }

    /// Connects to an agent listening on the unix socket at `path`, retrying
    /// until `deadline` has passed.
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        deadline: Duration,
    ) -> Result<Self, AgentClientError> {
        Self::connect(AgentAddr::Unix(path.as_ref().to_owned()), deadline).await
    }

    /// Connects to `addr`, retrying failed attempts until `deadline`.
    pub async fn connect(addr: AgentAddr, deadline: Duration) -> Result<Self, AgentClientError> {
        let until = Instant::now() + deadline;
        // The URI only names the :authority; the connector ignores it.
        let endpoint = Endpoint::from_static("http://husk-agent");
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let remaining = until.saturating_duration_since(Instant::now());
            let attempt = remaining.min(ATTEMPT_TIMEOUT);
            let connecting = endpoint.connect_with_connector(Connector::new(addr.clone()));
            let last_error = match tokio::time::timeout(attempt, connecting).await {
                Ok(Ok(channel)) => return Ok(Self::from_channel(channel, addr)),
                Ok(Err(e)) => error_chain(&e),
                Err(_) => format!("attempt timed out after {attempt:?}"),
            };
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(AgentClientError::Connect {
                    addr,
                    deadline,
                    attempts,
                    last_error,
                });
            }
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn from_channel(channel: Channel, addr: AgentAddr) -> Self {
        let raw = RawClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Self {
            raw,
            addr,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Sets the bound on each call made through this client.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    /// Asks the agent for its version and uptime.
    pub async fn health(&self) -> Result<AgentHealth, AgentClientError> {
        let mut raw = self.raw.clone();
        let reply = self
            .bounded("Health", raw.health(self.request(HealthRequest {})))
            .await?;
        Ok(AgentHealth {
            agent_version: reply.agent_version,
            api_version: reply.api_version,
            agent_uptime: Duration::from_millis(reply.agent_uptime_ms),
            system_uptime: Duration::from_millis(reply.system_uptime_ms),
        })
    }

    /// Asks the agent to power the VM off (or, outside a VM, to exit). Ok
    /// means the agent accepted; the VM's end is seen by its VMM exiting.
    pub async fn shutdown(&self) -> Result<(), AgentClientError> {
        let mut raw = self.raw.clone();
        self.bounded("Shutdown", raw.shutdown(self.request(ShutdownRequest {})))
            .await?;
        Ok(())
    }

    /// A request carrying our timeout, so the agent can give up too.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.call_timeout);
        request
    }

    /// Runs one call under the call timeout, naming it in any error.
    async fn bounded<T>(
        &self,
        call: &'static str,
        response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AgentClientError> {
        match tokio::time::timeout(self.call_timeout, response).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(AgentClientError::Call {
                call,
                addr: self.addr.clone(),
                status,
            }),
            Err(_) => Err(AgentClientError::Timeout {
                call,
                addr: self.addr.clone(),
                timeout: self.call_timeout,
            }),
        }
    }
}

/// `e` and its causes on one line: tonic's own message is just
/// "transport error", the useful part is underneath.
fn error_chain(e: &tonic::transport::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::agent::v1::agent_server::{Agent, AgentServer};
    use husk_proto::agent::v1::{HealthResponse, ShutdownResponse};
    use std::path::PathBuf;
    use tokio::net::UnixListener;
    use tokio_stream::wrappers::UnixListenerStream;

    /// An agent stand-in whose Health takes `delay`.
    struct FakeAgent {
        delay: Duration,
    }

    #[tonic::async_trait]
    impl Agent for FakeAgent {
        async fn health(
            &self,
            _: tonic::Request<HealthRequest>,
        ) -> Result<tonic::Response<HealthResponse>, tonic::Status> {
            tokio::time::sleep(self.delay).await;
            Ok(tonic::Response::new(HealthResponse {
                agent_version: "9.9.9".into(),
                api_version: 7,
                agent_uptime_ms: 1500,
                system_uptime_ms: 2500,
            }))
        }

        async fn shutdown(
            &self,
            _: tonic::Request<ShutdownRequest>,
        ) -> Result<tonic::Response<ShutdownResponse>, tonic::Status> {
            Err(tonic::Status::permission_denied("not today"))
        }
    }

    /// A scratch folder holding one socket path, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("husk-client-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("agent.sock")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves a FakeAgent on `path` after `after`.
    fn serve_later(path: PathBuf, after: Duration, delay: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let incoming = UnixListenerStream::new(UnixListener::bind(&path).unwrap());
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(FakeAgent { delay }))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    }

    #[tokio::test]
    async fn retries_until_the_agent_listens() {
        let scratch = Scratch::new("late");
        let path = scratch.socket();
        serve_later(path.clone(), Duration::from_millis(300), Duration::ZERO);
        let started = Instant::now();
        let client = AgentClient::connect_unix(&path, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let health = client.health().await.unwrap();
        assert_eq!(
            health,
            AgentHealth {
                agent_version: "9.9.9".into(),
                api_version: 7,
                agent_uptime: Duration::from_millis(1500),
                system_uptime: Duration::from_millis(2500),
            }
        );
        // A refused call names the call and carries the status.
        match client.shutdown().await {
            Err(AgentClientError::Call { call, status, .. }) => {
                assert_eq!(call, "Shutdown");
                assert_eq!(status.code(), tonic::Code::PermissionDenied);
            }
            other => panic!("expected a Call error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_naming_the_address() {
        let scratch = Scratch::new("never");
        let path = scratch.socket();
        let started = Instant::now();
        let err = AgentClient::connect_unix(&path, Duration::from_millis(300))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        match &err {
            AgentClientError::Connect { attempts, .. } => assert!(*attempts > 1, "{err}"),
            other => panic!("expected a Connect error, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[tokio::test]
    async fn a_slow_call_times_out() {
        let scratch = Scratch::new("slow");
        let path = scratch.socket();
        serve_later(path.clone(), Duration::ZERO, Duration::from_secs(30));
        let client = AgentClient::connect_unix(&path, Duration::from_secs(10))
            .await
            .unwrap()
            .with_call_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let err = client.health().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        // Either our timer or the agent honouring grpc-timeout wins.
        match err {
            AgentClientError::Timeout { call: "Health", .. } => {}
            AgentClientError::Call {
                call: "Health",
                ref status,
                ..
            } if status.code() == tonic::Code::Cancelled
                || status.code() == tonic::Code::DeadlineExceeded => {}
            other => panic!("expected a Health timeout, got {other:?}"),
        }
    }

    #[test]
    fn addresses_display_their_kind() {
        assert_eq!(
            AgentAddr::Vsock { cid: 3, port: 1024 }.to_string(),
            "vsock:3:1024"
        );
        assert_eq!(AgentAddr::Unix("/a/b".into()).to_string(), "unix:/a/b");
    }
}
