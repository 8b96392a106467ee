//! The one way to talk to husk-agent (`husk.agent.v1`): connect over
//! vsock, hybrid vsock or a unix socket with retries until a deadline (the
//! guest listens only once it has booted), check the agent's API revision
//! on every connect, and make typed calls in the CRI's terms, each bounded
//! by a timeout (a wedged guest must never hang its caller).
//!
//! - [`sandbox`]: health, shutdown, files, sandbox and network set-up,
//!   guest metrics;
//! - [`containers`]: create from a spec and layers, start, delete, list,
//!   status, update, stats;
//! - [`processes`]: exec, signal with a scope, wait for an [`Exit`],
//!   stdin, output and event streams.
//!
//! With the `fake` feature, [`fake`] has an in-memory agent for tests of
//! the code that uses this client.

mod connector;
mod containers;
mod error;
mod hybrid;
mod processes;
mod sandbox;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod tests;

use std::error::Error as _;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_proto::agent::v1::agent_client::AgentClient as RawClient;
use husk_proto::{MAX_MESSAGE_SIZE, MIN_API_VERSION};
use tonic::transport::{Channel, Endpoint};

pub use connector::AgentAddr;
use connector::Connector;
pub use containers::{CgroupSample, GuestContainer};
pub use error::AgentClientError;
pub use husk_proto::agent::v1::{
    CgroupStats, CgroupVersion, ContainerState, ExitReason, GuestMetricsResponse as GuestMetrics,
    Interface, Route, SetupNetworkRequest as NetworkConfig, SetupSandboxRequest as SandboxConfig,
};
pub use hybrid::{HandshakeError, MAX_REPLY_BYTES};
pub use processes::{
    AgentEvent, EventStream, Exit, Output, OutputReader, OutputStream, ProcessRef, SignalScope,
};
pub use sandbox::{AgentHealth, SandboxFiles};

/// Default bound on one call (connecting excluded).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// One connect attempt gives up after this long: a vsock connect to a guest
/// that is not listening yet may hang instead of failing.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts, doubling up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// A connected agent whose API revision was checked. Cheap to clone; calls
/// may run concurrently.
#[derive(Debug, Clone)]
pub struct AgentClient {
    raw: RawClient<Channel>,
    addr: AgentAddr,
    call_timeout: Duration,
    health: AgentHealth,
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

    /// Connects to the agent on vsock `port` through the hybrid vsock socket
    /// `uds` of husk-vmm, retrying until `deadline` has passed (the VMM
    /// closes the stream until the guest listens).
    pub async fn connect_hybrid_vsock(
        uds: impl AsRef<Path>,
        port: u32,
        deadline: Duration,
    ) -> Result<Self, AgentClientError> {
        let uds = uds.as_ref().to_owned();
        Self::connect(AgentAddr::HybridVsock { uds, port }, deadline).await
    }

    /// Connects to `addr` and asks Health, retrying failed attempts until
    /// `deadline`. An agent whose API revision is below
    /// [`MIN_API_VERSION`] is refused at once ([`AgentClientError::Incompatible`]).
    pub async fn connect(addr: AgentAddr, deadline: Duration) -> Result<Self, AgentClientError> {
        let until = Instant::now() + deadline;
        // The URI only names the :authority; the connector ignores it.
        let endpoint = Endpoint::from_static("http://husk-agent");
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        let mut last_error = String::new();
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            // Past the deadline (the backoff sleep may end right on it):
            // report the last real failure, not a zero-length attempt's.
            if remaining.is_zero() && attempts > 0 {
                return Err(AgentClientError::Connect {
                    addr,
                    deadline,
                    attempts,
                    last_error,
                });
            }
            attempts += 1;
            let attempt = remaining.min(ATTEMPT_TIMEOUT);
            let connecting = endpoint.connect_with_connector(Connector::new(addr.clone()));
            last_error = match tokio::time::timeout(attempt, connecting).await {
                Ok(Ok(channel)) => {
                    // Health gets what is left of the deadline (at least
                    // one attempt's worth): a guest may accept before its
                    // agent serves.
                    let left = until
                        .saturating_duration_since(Instant::now())
                        .max(ATTEMPT_TIMEOUT);
                    match Self::handshake(channel, addr.clone(), left).await {
                        Ok(client) => return Ok(client),
                        Err(error @ AgentClientError::Incompatible { .. }) => return Err(error),
                        Err(error) => error.to_string(),
                    }
                }
                Ok(Err(e)) => error_chain(&e),
                Err(_) => format!("attempt timed out after {attempt:?}"),
            };
            let remaining = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Health on a fresh channel, and the API check.
    async fn handshake(
        channel: Channel,
        addr: AgentAddr,
        timeout: Duration,
    ) -> Result<Self, AgentClientError> {
        let raw = RawClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let mut client = Self {
            raw,
            addr,
            call_timeout: timeout,
            health: AgentHealth::default(),
        };
        let health = client.health().await?;
        if health.api_version < MIN_API_VERSION {
            return Err(AgentClientError::Incompatible {
                addr: client.addr,
                agent_version: health.agent_version,
                api_version: health.api_version,
                min: MIN_API_VERSION,
            });
        }
        client.health = health;
        client.call_timeout = DEFAULT_CALL_TIMEOUT;
        Ok(client)
    }

    /// Sets the bound on each call made through this client (waits and
    /// streams have their own, see [`processes`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The bound on each call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &AgentAddr {
        &self.addr
    }

    /// What Health said when this client connected.
    pub fn connected_health(&self) -> &AgentHealth {
        &self.health
    }

    /// The agent's API revision, as checked on connect.
    pub fn api_version(&self) -> u32 {
        self.health.api_version
    }

    /// A fresh handle on the generated client (one shared channel).
    fn raw(&self) -> RawClient<Channel> {
        self.raw.clone()
    }

    /// A request carrying `timeout`, so the agent can give up too.
    fn request_with<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        Self::request_with(message, self.call_timeout)
    }

    /// Runs one call under the call timeout, naming it in any error.
    async fn bounded<T>(
        &self,
        call: &'static str,
        response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AgentClientError> {
        self.bounded_by(call, self.call_timeout, response).await
    }

    async fn bounded_by<T>(
        &self,
        call: &'static str,
        timeout: Duration,
        response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AgentClientError> {
        match tokio::time::timeout(timeout, response).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // tonic's own timer (from the request's grpc-timeout) may fire
            // first: the same timeout, said the same way.
            Ok(Err(status)) if expired(&status) => Err(AgentClientError::Timeout {
                call,
                addr: self.addr.clone(),
                timeout,
            }),
            Ok(Err(status)) => Err(self.call_error(call, status)),
            Err(_) => Err(AgentClientError::Timeout {
                call,
                addr: self.addr.clone(),
                timeout,
            }),
        }
    }

    fn call_error(&self, call: &'static str, status: tonic::Status) -> AgentClientError {
        AgentClientError::Call {
            call,
            addr: self.addr.clone(),
            status,
        }
    }

    fn too_large(
        &self,
        call: &'static str,
        what: &'static str,
        len: usize,
        limit: usize,
    ) -> AgentClientError {
        AgentClientError::TooLarge {
            call,
            addr: self.addr.clone(),
            what,
            len,
            limit,
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

/// Whether tonic gave up on the call because its timeout expired.
fn expired(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}
