//! The client against stand-in agents and VMMs on unix sockets.

use super::*;
use husk_proto::agent::v1::agent_server::{Agent, AgentServer};
use husk_proto::agent::v1::{HealthRequest, ReadFileRequest, ShutdownRequest, WriteFileRequest};
use husk_proto::agent::v1::{
    HealthResponse, ReadFileResponse, ShutdownResponse, WriteFileResponse,
};
use husk_proto::MAX_FILE_BYTES;
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
        tokio::time::sleep(self.delay).await;
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
        let dir = std::env::temp_dir().join(format!("husk-client-{}-{name}", std::process::id()));
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
    let err = client.read_file("/run/husk/shared/f", 0).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    // Either our timer or the agent honouring grpc-timeout wins.
    assert!(
        err.is_timeout() || err.code() == Some(tonic::Code::Cancelled),
        "{err:?}"
    );
    match err {
        AgentClientError::Timeout {
            call: "ReadFile", ..
        }
        | AgentClientError::Call {
            call: "ReadFile", ..
        } => {}
        other => panic!("expected a ReadFile timeout, got {other:?}"),
    }
}

/// An agent below MIN_API_VERSION is refused on connect, at once, naming
/// both revisions.
#[tokio::test]
async fn an_old_agent_is_refused_on_connect() {
    struct OldAgent;
    #[tonic::async_trait]
    impl Agent for OldAgent {
        async fn health(
            &self,
            _: tonic::Request<HealthRequest>,
        ) -> Result<tonic::Response<HealthResponse>, tonic::Status> {
            Ok(tonic::Response::new(HealthResponse {
                agent_version: "0.0.1".into(),
                api_version: 2,
                agent_uptime_ms: 1,
                system_uptime_ms: 1,
            }))
        }
    }
    let scratch = Scratch::new("old");
    let path = scratch.socket();
    let incoming = UnixListenerStream::new(UnixListener::bind(&path).unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(OldAgent))
            .serve_with_incoming(incoming),
    );
    let started = Instant::now();
    let err = AgentClient::connect_unix(&path, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not retried to the deadline"
    );
    match &err {
        AgentClientError::Incompatible {
            api_version: 2,
            min,
            ..
        } => {
            assert_eq!(*min, husk_proto::MIN_API_VERSION)
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("API 2") && text.contains("0.0.1"), "{text}");
}

/// Health is part of connecting: an agent that accepts but whose Health
/// fails is retried, and the deadline error says what Health answered.
#[tokio::test]
async fn connect_retries_until_health_answers() {
    let scratch = Scratch::new("nohealth");
    let path = scratch.socket();
    struct Broken;
    #[tonic::async_trait]
    impl Agent for Broken {
        async fn health(
            &self,
            _: tonic::Request<HealthRequest>,
        ) -> Result<tonic::Response<HealthResponse>, tonic::Status> {
            Err(tonic::Status::unavailable("still booting"))
        }
    }
    let incoming = UnixListenerStream::new(UnixListener::bind(&path).unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(Broken))
            .serve_with_incoming(incoming),
    );
    let err = AgentClient::connect_unix(&path, Duration::from_millis(600))
        .await
        .unwrap_err();
    match &err {
        AgentClientError::Connect {
            attempts,
            last_error,
            ..
        } => {
            assert!(*attempts > 1, "{err}");
            assert!(last_error.contains("still booting"), "{err}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

/// Typed calls refuse what the agent would refuse, without a call.
#[tokio::test]
async fn typed_calls_check_their_arguments() {
    let scratch = Scratch::new("typed");
    let path = scratch.socket();
    serve_later(path.clone(), Duration::ZERO, Duration::ZERO);
    let client = AgentClient::connect_unix(&path, Duration::from_secs(10))
        .await
        .unwrap();
    let init = ProcessRef::init("c1");
    let exec = ProcessRef::exec("c1", "e1");
    let err = client
        .signal(&init, 0, SignalScope::Process)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentClientError::Invalid {
                call: "SignalProcess",
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .signal(&exec, 9, SignalScope::Container)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exec e1 in container c1"), "{err}");
    let process = oci_spec::runtime::Process::default();
    let err = client.exec(&init, &process, false).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentClientError::Invalid {
                call: "ExecProcess",
                ..
            }
        ),
        "{err:?}"
    );
    let huge = vec![0u8; husk_proto::MAX_SPEC_BYTES + 1];
    let err = client
        .create_container_from_json("c1", huge, &[], false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentClientError::TooLarge {
                what: "the OCI spec",
                ..
            }
        ),
        "{err:?}"
    );
}

/// An API 3 agent's exit reasons (words only) read like an API 4 one's.
#[test]
fn exit_reasons_of_old_and_new_agents_agree() {
    use husk_proto::agent::v1::ExitStatus;
    let old = |code, signal, reason: &str| ExitStatus {
        exit_code: code,
        signal,
        reason: reason.into(),
        finished_at_ns: 5,
        kind: 0,
    };
    assert_eq!(
        Exit::from(&old(0, 0, "Completed")).reason,
        ExitReason::Completed
    );
    assert_eq!(
        Exit::from(&old(137, 9, "OOMKilled")).reason,
        ExitReason::OomKilled
    );
    assert_eq!(Exit::from(&old(137, 9, "")).reason, ExitReason::Signaled);
    assert_eq!(Exit::from(&old(3, 0, "")).reason, ExitReason::Error);
    let new = ExitStatus {
        kind: ExitReason::OomKilled as i32,
        ..old(137, 9, "Signaled")
    };
    let exit = Exit::from(&new);
    assert_eq!(
        (exit.code, exit.signal, exit.reason, exit.finished_at_ns),
        (137, 9, ExitReason::OomKilled, 5)
    );
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
