//! Runs husk-agent as an ordinary root process with a busybox image layer
//! and drives its container API through the host's typed client, as the
//! husk daemon will through vsock.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use husk_agent_client::{
    AgentClient, AgentClientError, Exit, GuestContainer, OutputStream, ProcessRef,
};
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::agent_client::AgentClient as WireClient;
use oci_spec::runtime::Process;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

const AGENT: &str = env!("CARGO_BIN_EXE_husk-agent");
/// Bound on any single call or wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The layer's name under the agent's shared root.
pub const LAYER: &str = "busybox";

/// One agent with its own state and layer folders; stopped with SIGTERM
/// on drop so it removes its containers.
pub struct TestAgent {
    child: Child,
    pub dir: PathBuf,
    socket: PathBuf,
    pub client: AgentClient,
}

impl TestAgent {
    pub async fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("husk-ct-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shared")).unwrap();
        husk_tests::busybox::build_layer(&dir.join("shared").join(LAYER)).unwrap();
        let socket = dir.join("agent.sock");
        let mut child = Command::new(AGENT)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--shared-root")
            .arg(dir.join("shared"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start husk-agent");
        // Wait for the ready line, then keep draining stdout.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("no ready line from husk-agent");
        assert!(line.starts_with("husk-agent ready"), "{line}");
        // Calls get the tests' bound, not the daemon's: a loaded test
        // machine may take seconds to set up a container.
        let client = AgentClient::connect_unix(&socket, Duration::from_secs(10))
            .await
            .expect("connect to husk-agent")
            .with_call_timeout(TIMEOUT);
        Self {
            child,
            dir,
            socket,
            client,
        }
    }

    pub fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join("root/containers").join(id)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn create(&self, id: &str, spec: &Value) -> Result<u32, AgentClientError> {
        self.create_with(id, spec, false).await
    }

    /// Creates `id` over the busybox layer. The spec goes as JSON, as
    /// built: these tests are about what the agent itself accepts, so
    /// some specs are broken on purpose.
    pub async fn create_with(
        &self,
        id: &str,
        spec: &Value,
        stdin: bool,
    ) -> Result<u32, AgentClientError> {
        let json = serde_json::to_vec(spec).unwrap();
        self.client
            .create_container_from_json(id, json, &[LAYER.into()], stdin)
            .await
    }

    pub async fn start_container(&self, id: &str) -> Result<(), AgentClientError> {
        self.client.start_container(id).await
    }

    /// Collects a process's whole output: (stdout, stderr).
    pub async fn output(&self, process: &ProcessRef) -> (String, String) {
        let mut reader = self.client.read_output(process).await.expect("ReadOutput");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // The client bounds opening the stream, not reading it.
        let collect = async {
            while let Some(chunk) = reader.next().await.expect("output stream") {
                match chunk.stream {
                    OutputStream::Stderr => err.extend(chunk.data),
                    OutputStream::Stdout => out.extend(chunk.data),
                }
            }
        };
        tokio::time::timeout(TIMEOUT, collect)
            .await
            .expect("output did not end in time");
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    pub async fn wait(&self, process: &ProcessRef) -> Exit {
        self.client
            .wait(process, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("WaitProcess for {process}: {e}"))
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), AgentClientError> {
        self.client.delete_container(id, force).await
    }

    pub async fn status(&self, id: &str) -> Result<GuestContainer, AgentClientError> {
        self.client.container_status(id).await
    }

    /// Creates, starts, collects output and waits; the stopped container
    /// stays for the caller to look at.
    pub async fn run_to_exit(&self, id: &str, spec: &Value) -> (Exit, String, String) {
        self.create(id, spec).await.expect("CreateContainer");
        self.start_container(id).await.expect("StartContainer");
        let init = ProcessRef::init(id);
        let (out, err) = self.output(&init).await;
        let exit = self.wait(&init).await;
        (exit, out, err)
    }

    /// Creates, starts, collects output, waits and deletes.
    pub async fn run(&self, id: &str, spec: &Value) -> (Exit, String, String) {
        let ran = self.run_to_exit(id, spec).await;
        self.delete(id, false).await.expect("DeleteContainer");
        ran
    }

    /// Runs `sh -c script` in a container made from `spec` (its args are
    /// replaced) and returns (exit, stdout, stderr).
    pub async fn sh(&self, id: &str, spec: Value, script: &str) -> (Exit, String, String) {
        self.run(id, &with_script(spec, script)).await
    }

    /// Runs `process` (an OCI process object) in container `id` as exec
    /// `exec_id`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Value,
        stdin: bool,
    ) -> Result<u32, AgentClientError> {
        let process: Process =
            serde_json::from_value(process.clone()).expect("a valid OCI process");
        self.client
            .exec(&ProcessRef::exec(id, exec_id), &process, stdin)
            .await
    }

    /// A bare generated client on the agent's socket, for what the typed
    /// client will not do: send requests its own checks refuse (so the
    /// agent's checks stay tested) and show fields it folds away (the
    /// legacy exit `reason` string API 3 hosts read).
    pub async fn wire(&self) -> WireClient<Channel> {
        let channel = Endpoint::from_shared(format!("unix:{}", self.socket.display()))
            .expect("a unix endpoint")
            .timeout(TIMEOUT)
            .connect()
            .await
            .expect("connect a bare client");
        WireClient::new(channel)
    }

    /// Checks the stopped init process of `id` as sent on the wire: the
    /// enum itself (the client would fill it from the string), and the
    /// legacy `reason` string next to it.
    pub async fn assert_wire_exit(&self, id: &str, exit: &Exit, legacy_reason: &str) {
        let status = self
            .wire()
            .await
            .wait_process(pb::WaitProcessRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
            .expect("WaitProcess on the wire")
            .into_inner()
            .status
            .expect("an exit status");
        assert_eq!(status.kind(), exit.reason, "{id}: {status:?}");
        assert_eq!(status.reason, legacy_reason, "{id}: {status:?}");
        assert_eq!(
            (status.exit_code, status.signal),
            (exit.code, exit.signal),
            "{id}"
        );
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fixture's default spec running `args`.
pub fn spec(args: &[&str]) -> Value {
    husk_tests::busybox::default_spec(args)
}

/// `spec` running `sh -c script` instead of its args.
pub fn with_script(mut spec: Value, script: &str) -> Value {
    spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
    spec
}

/// A long-running container's spec.
pub fn sleeper() -> Value {
    spec(&["/bin/sleep", "3600"])
}

/// The spec's process object with other args, for ExecProcess.
pub fn process(args: &[&str]) -> Value {
    let mut p = spec(args)["process"].clone();
    p["args"] = json!(args);
    p
}

/// Whether a path is gone.
pub fn gone(path: &Path) -> bool {
    !path.exists()
}
