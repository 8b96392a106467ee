//! Runs husk-agent as an ordinary root process with a busybox image layer
//! and drives its container API through the host's client, as the husk
//! daemon will through vsock.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use husk_agent_client::AgentClient;
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::agent_client::AgentClient as RawClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

const AGENT: &str = env!("CARGO_BIN_EXE_husk-agent");
/// Bound on any single wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The layer's name under the agent's shared root.
pub const LAYER: &str = "busybox";

/// One agent with its own state and layer folders; stopped with SIGTERM
/// on drop so it removes its containers.
pub struct TestAgent {
    child: Child,
    pub dir: PathBuf,
    pub client: RawClient<Channel>,
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
        let client = AgentClient::connect_unix(&socket, Duration::from_secs(10))
            .await
            .expect("connect to husk-agent")
            .raw();
        Self { child, dir, client }
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

    pub async fn create(&self, id: &str, spec: &Value) -> Result<u32, tonic::Status> {
        self.create_with(id, spec, false).await
    }

    pub async fn create_with(
        &self,
        id: &str,
        spec: &Value,
        stdin: bool,
    ) -> Result<u32, tonic::Status> {
        let reply = self
            .client
            .clone()
            .create_container(pb::CreateContainerRequest {
                container_id: id.into(),
                oci_spec_json: serde_json::to_vec(spec).unwrap(),
                layers: vec![LAYER.into()],
                stdin,
            })
            .await?;
        Ok(reply.into_inner().pid)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .start_container(pb::StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// Collects a process's whole output: (stdout, stderr).
    pub async fn output(&self, id: &str, exec_id: &str) -> (String, String) {
        let mut stream = self
            .client
            .clone()
            .read_output(pb::ReadOutputRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            })
            .await
            .expect("ReadOutput")
            .into_inner();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let collect = async {
            while let Some(chunk) = stream.message().await.expect("output stream") {
                match chunk.stream() {
                    pb::OutputStream::Stderr => err.extend(chunk.data),
                    _ => out.extend(chunk.data),
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

    pub async fn wait(&self, id: &str, exec_id: &str) -> pb::ExitStatus {
        let mut client = self.client.clone();
        let call = client.wait_process(pb::WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        });
        tokio::time::timeout(TIMEOUT, call)
            .await
            .expect("process did not exit in time")
            .expect("WaitProcess")
            .into_inner()
            .status
            .expect("a status")
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .delete_container(pb::DeleteContainerRequest {
                container_id: id.into(),
                force,
            })
            .await?;
        Ok(())
    }

    pub async fn state(&self, id: &str) -> Result<pb::ContainerState, tonic::Status> {
        Ok(self
            .client
            .clone()
            .container_state(pb::ContainerStateRequest {
                container_id: id.into(),
            })
            .await?
            .into_inner()
            .state
            .expect("a state"))
    }

    /// Creates, starts, collects output, waits and deletes.
    pub async fn run(&self, id: &str, spec: &Value) -> (pb::ExitStatus, String, String) {
        self.create(id, spec).await.expect("CreateContainer");
        self.start_container(id).await.expect("StartContainer");
        let (out, err) = self.output(id, "").await;
        let status = self.wait(id, "").await;
        self.delete(id, false).await.expect("DeleteContainer");
        (status, out, err)
    }

    /// Runs `sh -c script` in a container made from `spec` (its args are
    /// replaced) and returns (status, stdout, stderr).
    pub async fn sh(
        &self,
        id: &str,
        mut spec: Value,
        script: &str,
    ) -> (pb::ExitStatus, String, String) {
        spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
        self.run(id, &spec).await
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Value,
        stdin: bool,
    ) -> Result<u32, tonic::Status> {
        let reply = self
            .client
            .clone()
            .exec_process(pb::ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                process_json: serde_json::to_vec(process).unwrap(),
                stdin,
            })
            .await?;
        Ok(reply.into_inner().pid)
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
