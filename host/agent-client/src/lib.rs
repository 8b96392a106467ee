//! Client of the guest agent API (`husk.agent.v1`): connects with retries
//! until a deadline (the guest listens only once it has booted) and bounds
//! every call with a timeout.

mod connector;
mod hybrid;

use std::error::Error as _;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_proto::agent::v1::agent_client::AgentClient as RawClient;
use husk_proto::agent::v1::{HealthRequest, ReadFileRequest, ShutdownRequest, WriteFileRequest};
use husk_proto::{MAX_FILE_BYTES, MAX_MESSAGE_SIZE};
use tonic::transport::{Channel, Endpoint};

pub use connector::AgentAddr;
use connector::Connector;
pub use hybrid::{HandshakeError, MAX_REPLY_BYTES};

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
    #[error("agent call {call} to {addr}: {what} of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        call: &'static str,
        addr: AgentAddr,
        what: &'static str,
        len: usize,
        limit: usize,
    },
    // The status is in the message, not a `#[source]`: an error-chain
    // printer (anyhow's `{:#}`) would print it twice.
    #[error("agent call {call} to {addr} failed: {status}")]
    Call {
        call: &'static str,
        addr: AgentAddr,
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

    /// Connects to `addr`, retrying failed attempts until `deadline`.
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
                Ok(Ok(channel)) => return Ok(Self::from_channel(channel, addr)),
                Ok(Err(e)) => error_chain(&e),
                Err(_) => format!("attempt timed out after {attempt:?}"),
            };
            let remaining = until.saturating_duration_since(Instant::now());
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

    /// The generated client on this connection, for calls this wrapper does
    /// not bound itself (streams, the container API). Callers bound them.
    pub fn raw(&self) -> RawClient<Channel> {
        self.raw.clone()
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

    /// Reads the whole regular file `path` (absolute, under the guest's
    /// shared folder) if it holds at most `max_bytes` (0: the 1 MiB limit).
    /// Needs an agent with API version 2 or later.
    pub async fn read_file(&self, path: &str, max_bytes: u32) -> Result<Vec<u8>, AgentClientError> {
        let mut raw = self.raw.clone();
        let request = self.request(ReadFileRequest {
            path: path.to_owned(),
            max_bytes,
        });
        let reply = self.bounded("ReadFile", raw.read_file(request)).await?;
        // Trust but verify: the agent must honour our bound.
        let limit = match max_bytes {
            0 => MAX_FILE_BYTES,
            n => n as usize,
        };
        if reply.data.len() > limit {
            return Err(self.too_large("ReadFile", "reply data", reply.data.len(), limit));
        }
        Ok(reply.data)
    }

    /// Creates or replaces the regular file `path` (absolute, under the
    /// guest's shared folder) with `data` (≤ 1 MiB) and permission bits
    /// `mode` (0: 0o644). Needs an agent with API version 2 or later.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), AgentClientError> {
        // Checked here too, so a caller gets a clear error without a call.
        if data.len() > MAX_FILE_BYTES {
            return Err(self.too_large("WriteFile", "data", data.len(), MAX_FILE_BYTES));
        }
        let mut raw = self.raw.clone();
        let request = self.request(WriteFileRequest {
            path: path.to_owned(),
            data: data.to_vec(),
            mode,
        });
        self.bounded("WriteFile", raw.write_file(request)).await?;
        Ok(())
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
    use husk_proto::agent::v1::{
        HealthResponse, ReadFileResponse, ShutdownResponse, WriteFileResponse,
    };
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};
    use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};

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

        /// Echoes the request back as `<path>:<max_bytes>`, ignoring the
        /// bound (so a test can see the client enforce it).
        async fn read_file(
            &self,
            request: tonic::Request<ReadFileRequest>,
        ) -> Result<tonic::Response<ReadFileResponse>, tonic::Status> {
            let r = request.into_inner();
            if r.path.contains("missing") {
                return Err(tonic::Status::not_found(format!(
                    "{}: no such file",
                    r.path
                )));
            }
            Ok(tonic::Response::new(ReadFileResponse {
                data: format!("{}:{}", r.path, r.max_bytes).into_bytes(),
            }))
        }

        async fn write_file(
            &self,
            request: tonic::Request<WriteFileRequest>,
        ) -> Result<tonic::Response<WriteFileResponse>, tonic::Status> {
            let r = request.into_inner();
            if r.mode != 0o600 || r.data != b"payload" || r.path != "/run/husk/shared/w" {
                return Err(tonic::Status::invalid_argument(format!("unexpected {r:?}")));
            }
            Ok(tonic::Response::new(WriteFileResponse {}))
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

    /// What a fake husk-vmm saw on its hybrid vsock socket.
    #[derive(Debug, Default)]
    struct VmmLog {
        requests: Vec<String>,
    }

    /// Reads the `CONNECT` line, one byte at a time like a VMM must.
    async fn request_line(stream: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while stream.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// A fake husk-vmm on `path`: the first `refuse` connections are closed
    /// after their request (the guest is not listening yet); later ones get
    /// `OK` and are handed to a FakeAgent, as if the guest accepted them.
    fn fake_vmm(path: &Path, refuse: usize) -> Arc<Mutex<VmmLog>> {
        let log = Arc::new(Mutex::new(VmmLog::default()));
        let listener = UnixListener::bind(path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<UnixStream>>(4);
        let seen = log.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let line = request_line(&mut s).await;
                seen.lock().unwrap().requests.push(line);
                n += 1;
                if n <= refuse {
                    continue; // dropped: closed without an answer
                }
                s.write_all(b"OK 1073741824\n").await.unwrap();
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(FakeAgent {
                    delay: Duration::ZERO,
                }))
                .serve_with_incoming(ReceiverStream::new(rx))
                .await
                .unwrap();
        });
        log
    }

    #[tokio::test]
    async fn hybrid_vsock_retries_until_the_guest_listens_then_serves_calls() {
        let scratch = Scratch::new("hvsock");
        let uds = scratch.socket();
        let log = fake_vmm(&uds, 3);
        let client = AgentClient::connect_hybrid_vsock(&uds, 1024, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            client.addr(),
            &AgentAddr::HybridVsock {
                uds: uds.clone(),
                port: 1024
            }
        );
        assert_eq!(client.health().await.unwrap().agent_version, "9.9.9");
        let requests = log.lock().unwrap().requests.clone();
        assert_eq!(requests.len(), 4, "3 refused, 1 accepted: {requests:?}");
        assert!(requests.iter().all(|r| r == "CONNECT 1024"), "{requests:?}");
    }

    #[tokio::test]
    async fn hybrid_vsock_gives_up_at_the_deadline_on_garbage() {
        let scratch = Scratch::new("hvgarbage");
        let uds = scratch.socket();
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                request_line(&mut s).await;
                let _ = s.write_all(b"NOPE\n").await;
            }
        });
        let started = Instant::now();
        let err = AgentClient::connect_hybrid_vsock(&uds, 1024, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = err.to_string();
        assert!(
            text.contains(&format!("hvsock:{}:1024", uds.display())),
            "{text}"
        );
        assert!(text.contains("\"NOPE\""), "{text}");
        match err {
            AgentClientError::Connect { attempts, .. } => assert!(attempts > 1),
            other => panic!("expected a Connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn file_calls_carry_their_fields_and_bounds() {
        let scratch = Scratch::new("files");
        let path = scratch.socket();
        serve_later(path.clone(), Duration::ZERO, Duration::ZERO);
        let client = AgentClient::connect_unix(&path, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(client.read_file("/x", 100).await.unwrap(), b"/x:100");
        assert_eq!(client.read_file("/x", 0).await.unwrap(), b"/x:0");
        client
            .write_file("/run/husk/shared/w", b"payload", 0o600)
            .await
            .unwrap();
        match client.read_file("/missing", 1).await {
            Err(AgentClientError::Call { call, status, .. }) => {
                assert_eq!(call, "ReadFile");
                assert_eq!(status.code(), tonic::Code::NotFound);
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        // The fake ignores the bound: 5 bytes for a bound of 2 are caught.
        assert!(matches!(
            client.read_file("/ab", 2).await,
            Err(AgentClientError::TooLarge {
                call: "ReadFile",
                len: 5,
                limit: 2,
                ..
            })
        ));
        let big = vec![0u8; MAX_FILE_BYTES + 1];
        assert!(matches!(
            client.write_file("/run/husk/shared/w", &big, 0).await,
            Err(AgentClientError::TooLarge {
                call: "WriteFile",
                ..
            })
        ));
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
        let hybrid = AgentAddr::HybridVsock {
            uds: "/run/vm/vsock.sock".into(),
            port: 1024,
        };
        assert_eq!(hybrid.to_string(), "hvsock:/run/vm/vsock.sock:1024");
    }
}
