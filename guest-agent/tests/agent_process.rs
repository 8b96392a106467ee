//! Runs the built husk-agent as an ordinary process on a unix socket and
//! drives it through the host's client, as the host will through vsock.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_agent_client::{AgentClient, AgentClientError};

const AGENT: &str = env!("CARGO_BIN_EXE_husk-agent");
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch folder for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("husk-agent-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent process; killed on drop if a test fails half-way.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(listen: &str) -> Self {
        Self::start_with(listen, &[])
    }

    fn start_with(listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(AGENT)
            .args(["--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start husk-agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for the exact ready line; fails on anything else or a timeout.
    fn wait_ready(&self) {
        let want = format!("husk-agent ready {}", env!("CARGO_PKG_VERSION"));
        let line = self
            .lines
            .recv_timeout(READY_TIMEOUT)
            .expect("no ready line from husk-agent in time");
        assert_eq!(line, want);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "husk-agent still running {timeout:?} after Shutdown"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_health_then_exits_zero_on_shutdown() {
    let scratch = Scratch::new("serve");
    let socket = scratch.0.join("agent.sock");
    let mut agent = Agent::start(&format!("unix:{}", socket.display()));
    agent.wait_ready();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = AgentClient::connect_unix(&socket, Duration::from_secs(5))
            .await
            .expect("connect");
        let health = client.health().await.expect("Health");
        assert_eq!(health.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(health.api_version, husk_proto::API_VERSION);
        assert!(health.system_uptime >= health.agent_uptime, "{health:?}");

        client.shutdown().await.expect("Shutdown");
    });

    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "husk-agent exited with {status}");
    assert!(!socket.exists(), "the agent should remove its socket");
}

#[test]
fn sigterm_stops_it_cleanly() {
    let scratch = Scratch::new("sigterm");
    let socket = scratch.0.join("agent.sock");
    let mut agent = Agent::start(&format!("unix:{}", socket.display()));
    agent.wait_ready();
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "husk-agent exited with {status}");
}

#[test]
fn bad_listen_values_fail_naming_the_flag() {
    for bad in ["tcp:1024", "vsock:nope", "unix:"] {
        let out = Command::new(AGENT)
            .args(["--listen", bad])
            .output()
            .expect("cannot start husk-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: exited {}", out.status);
        assert!(stderr.contains("--listen"), "{bad}: stderr was {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{bad}: must not print the ready line"
        );
    }
}

#[test]
fn files_in_the_shared_root_round_trip_and_nothing_else_is_reachable() {
    let scratch = Scratch::new("files");
    let root = scratch.0.join("shared");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(scratch.0.join("secret"), b"host secret").unwrap();
    std::os::unix::fs::symlink(scratch.0.join("secret"), root.join("escape")).unwrap();
    std::fs::write(root.join("sub/from-host"), b"written by the host").unwrap();
    let socket = scratch.0.join("agent.sock");
    let root_arg = root.display().to_string();
    let mut agent = Agent::start_with(
        &format!("unix:{}", socket.display()),
        &["--shared-root", &root_arg],
    );
    agent.wait_ready();
    let in_root = |rel: &str| format!("{root_arg}/{rel}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = AgentClient::connect_unix(&socket, Duration::from_secs(5))
            .await
            .expect("connect");
        let data = client
            .read_file(&in_root("sub/from-host"), 0)
            .await
            .expect("ReadFile");
        assert_eq!(data, b"written by the host");

        client
            .write_file(&in_root("sub/from-agent"), b"written by the agent", 0o600)
            .await
            .expect("WriteFile");
        assert_eq!(
            std::fs::read(root.join("sub/from-agent")).unwrap(),
            b"written by the agent"
        );

        let refused = [
            (in_root("escape"), tonic::Code::PermissionDenied),
            (in_root("../secret"), tonic::Code::InvalidArgument),
            (
                scratch.0.join("secret").display().to_string(),
                tonic::Code::InvalidArgument,
            ),
            ("sub/from-host".to_owned(), tonic::Code::InvalidArgument),
            (in_root("missing"), tonic::Code::NotFound),
        ];
        for (path, code) in refused {
            match client.read_file(&path, 0).await {
                Err(AgentClientError::Call { status, .. }) => {
                    assert_eq!(status.code(), code, "{path}: {status:?}");
                    assert!(status.message().contains(&path), "{path}: {status:?}");
                }
                other => panic!("{path}: expected {code:?}, got {other:?}"),
            }
        }
        assert!(client
            .write_file(&in_root("escape"), b"overwritten", 0)
            .await
            .is_err());
        client.shutdown().await.expect("Shutdown");
    });
    assert_eq!(
        std::fs::read(scratch.0.join("secret")).unwrap(),
        b"host secret",
        "a file outside the shared root was changed"
    );
    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "husk-agent exited with {status}");
}
