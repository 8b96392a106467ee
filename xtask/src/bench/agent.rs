//! husk-agent's side of `cargo xtask bench agent`: the agent as an
//! ordinary root process on this host, driven through the host's typed
//! client over a unix socket, as the daemon drives it over vsock.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use husk_agent_client::{AgentClient, AgentClientError, Exit, ProcessRef, SandboxConfig};
use husk_tests::busybox;
use oci_spec::runtime::{Process, Spec};
use tokio::runtime::Runtime;

use super::workload::{EXEC_ARGS, LAYER, SLEEPER, SLEEPER_ARGS, TRUE_ARGS};

/// Bound on the agent's startup (until its socket accepts), on each call
/// and on each wait for an exit, so a wedged agent fails the benchmark
/// instead of hanging it.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

/// husk-agent running as a root process on this host, and a connection to
/// it. The agent is killed when this is dropped.
pub(super) struct Agent<'rt> {
    client: AgentClient,
    runtime: &'rt Runtime,
    /// Parsed once, outside the timing. The client encodes them on every
    /// call, as the daemon does: microseconds against milliseconds.
    true_spec: Spec,
    sleeper_spec: Spec,
    exec_process: Process,
    _process: AgentProcess,
}

impl<'rt> Agent<'rt> {
    /// Starts the agent with its state in `scratch` and the image layers
    /// under `layers`, connects, and sets up the sandbox.
    pub(super) fn start(
        bin: &Path,
        scratch: &Path,
        layers: &Path,
        runtime: &'rt Runtime,
    ) -> anyhow::Result<Self> {
        let socket = scratch.join("agent.sock");
        let mut process = AgentProcess::spawn(bin, &socket, scratch, layers)?;
        process.wait_for_socket(&socket)?;
        let client = runtime
            .block_on(AgentClient::connect_unix(&socket, AGENT_DEADLINE))?
            .with_call_timeout(AGENT_DEADLINE);
        let agent = Self {
            client,
            runtime,
            true_spec: serde_json::from_value(busybox::default_spec(TRUE_ARGS))
                .context("the /bin/true spec")?,
            sleeper_spec: serde_json::from_value(busybox::default_spec(SLEEPER_ARGS))
                .context("the sleeper's spec")?,
            exec_process: serde_json::from_value(busybox::default_process(EXEC_ARGS))
                .context("the exec's process")?,
            _process: process,
        };
        let sandbox = SandboxConfig {
            hostname: "husk".into(),
            ..Default::default()
        };
        runtime
            .block_on(agent.client.setup_sandbox(sandbox))
            .context("SetupSandbox")?;
        Ok(agent)
    }

    /// Creates, starts, waits for and deletes a [`TRUE_ARGS`] container; a
    /// failed run is force-deleted so it leaves nothing behind.
    pub(super) fn create_start(&self, id: &str) -> anyhow::Result<()> {
        let result = self.runtime.block_on(self.run_to_completion(id));
        if result.is_err() {
            let _ = self.delete(id);
        }
        result.with_context(|| format!("container {id}"))
    }

    async fn run_to_completion(&self, id: &str) -> anyhow::Result<()> {
        self.create_and_start(id, &self.true_spec).await?;
        let waited = self
            .client
            .wait(&ProcessRef::init(id), AGENT_DEADLINE)
            .await;
        ensure_success("/bin/true", waited)?;
        self.client
            .delete_container(id, false)
            .await
            .context("DeleteContainer")?;
        Ok(())
    }

    async fn create_and_start(&self, id: &str, spec: &Spec) -> anyhow::Result<()> {
        self.client
            .create_container(id, spec, &[LAYER.into()], false)
            .await
            .context("CreateContainer")?;
        self.client
            .start_container(id)
            .await
            .context("StartContainer")?;
        Ok(())
    }

    /// Creates and starts [`SLEEPER`], running [`SLEEPER_ARGS`].
    pub(super) fn start_sleeper(&self) -> anyhow::Result<()> {
        let started = self
            .runtime
            .block_on(self.create_and_start(SLEEPER, &self.sleeper_spec));
        if started.is_err() {
            let _ = self.delete(SLEEPER);
        }
        started.context("the agent's sleeper container")
    }

    /// Runs [`EXEC_ARGS`] in [`SLEEPER`] as exec `exec_id` and waits for it.
    pub(super) fn exec(&self, exec_id: &str) -> anyhow::Result<()> {
        let exec = ProcessRef::exec(SLEEPER, exec_id);
        self.runtime
            .block_on(async {
                self.client
                    .exec(&exec, &self.exec_process, false)
                    .await
                    .context("ExecProcess")?;
                let waited = self.client.wait(&exec, AGENT_DEADLINE).await;
                ensure_success("/bin/true", waited)
            })
            .with_context(|| format!("exec {exec_id}"))
    }

    /// Force-deletes container `id`, running or not.
    pub(super) fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.client.delete_container(id, true))
            .with_context(|| format!("DeleteContainer {id}"))
    }
}

/// Fails unless the wait answered and the process exited with code 0.
fn ensure_success(what: &str, waited: Result<Exit, AgentClientError>) -> anyhow::Result<()> {
    let exit = waited.with_context(|| format!("{what}: WaitProcess failed"))?;
    ensure!(
        exit.code == 0 && exit.signal == 0,
        "{what} did not succeed: exit_code={} signal={} reason={:?}",
        exit.code,
        exit.signal,
        exit.reason
    );
    Ok(())
}

/// The agent's process, killed and reaped when dropped so no run leaves an
/// agent behind. Its stdout and stderr go to `agent.log` in the scratch
/// folder, away from the benchmark's lines.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(bin: &Path, socket: &Path, scratch: &Path, layers: &Path) -> anyhow::Result<Self> {
        let log = scratch.join("agent.log");
        let out = File::create(&log)?;
        let mut listen = std::ffi::OsString::from("unix:");
        listen.push(socket);
        let child = Command::new(bin)
            .arg("--listen")
            .arg(listen)
            .arg("--root")
            .arg(scratch.join("agent-state"))
            .arg("--shared-root")
            .arg(layers)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self { child, log })
    }

    /// Waits until the agent has bound `socket`, failing at once (with its
    /// log) if it exits first rather than retrying a dead agent for the
    /// whole connect deadline.
    fn wait_for_socket(&mut self, socket: &Path) -> anyhow::Result<()> {
        let until = Instant::now() + AGENT_DEADLINE;
        while !socket.exists() {
            if let Some(status) = self.child.try_wait()? {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                bail!("husk-agent exited ({status}) before listening:\n{log}");
            }
            ensure!(
                Instant::now() < until,
                "husk-agent did not bind {} within {AGENT_DEADLINE:?}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    /// SIGTERM first: the agent then removes its containers and cgroups;
    /// SIGKILL only if it does not stop within 10 s.
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use husk_agent_client::ExitReason;

    use super::*;

    #[test]
    fn exits_other_than_a_clean_zero_fail() {
        let exited = |code, signal, reason| {
            Ok(Exit {
                code,
                signal,
                reason,
                finished_at_ns: 0,
            })
        };
        assert!(ensure_success("p", exited(0, 0, ExitReason::Completed)).is_ok());
        assert!(ensure_success("p", exited(1, 0, ExitReason::Error)).is_err());
        assert!(ensure_success("p", exited(137, 9, ExitReason::Signaled)).is_err());
        // A wait that brought no exit status: the client makes that an
        // error, which must fail the run too.
        let no_status = AgentClientError::Invalid {
            call: "WaitProcess",
            reason: "no exit status".into(),
        };
        let err = ensure_success("p", Err(no_status)).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("p: WaitProcess failed"),
            "{err:#}"
        );
    }

    #[test]
    fn the_benchmarked_specs_are_valid_oci() {
        serde_json::from_value::<Spec>(busybox::default_spec(TRUE_ARGS)).unwrap();
        serde_json::from_value::<Spec>(busybox::default_spec(SLEEPER_ARGS)).unwrap();
        serde_json::from_value::<Process>(busybox::default_process(EXEC_ARGS)).unwrap();
    }

    #[test]
    fn an_agent_that_exits_fails_fast_with_its_log() {
        let scratch = std::env::temp_dir().join(format!("husk-bench-exit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).unwrap();
        let fake = scratch.join("fake-agent");
        fs::write(&fake, "#!/bin/sh\necho \"bad flag: $3\" >&2\nexit 2\n").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let socket = scratch.join("agent.sock");
        let mut agent = AgentProcess::spawn(&fake, &socket, &scratch, &scratch).unwrap();
        let started = Instant::now();
        let err = agent.wait_for_socket(&socket).unwrap_err().to_string();
        assert!(started.elapsed() < AGENT_DEADLINE / 2, "{err}");
        assert!(err.contains("exited"), "{err}");
        assert!(err.contains("bad flag: --root"), "{err}");
        fs::remove_dir_all(&scratch).unwrap();
    }
}
