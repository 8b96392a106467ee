//! `cargo xtask bench agent`: containers and execs through husk-agent on
//! this host against Debian's runc on the same busybox bundle.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use husk_agent_client::{AgentClient, Exit, ProcessRef, SandboxConfig};
use husk_tests::{busybox, debian, stats};
use oci_spec::runtime::Process;
use tokio::runtime::Runtime;

use super::runc::Runc;
use super::workload::SLEEPER;
use crate::static_bin::{self, Profile};

/// The image layer every benchmarked container runs, a folder under the
/// agent's shared root.
const LAYER: &str = "busybox";

/// Bound on the agent's startup (until its socket accepts) and on each call,
/// so a wedged agent fails the benchmark instead of hanging it.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the busybox container `runs` times under husk-agent (an ordinary
/// root process on this host, talking gRPC over a unix socket) and runc
/// alternately, then execs into one running container of each the same
/// way. Prints `<agent|runc> <create_start|exec> median_ms=.. p95_ms=..
/// runs=..` lines, then `ratio agent/runc create_start=.. exec=..`.
pub fn agent(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    debian::ensure_installed(&["runc", "busybox-static"])?;
    // The static build is the binary the guest runs (and `cargo xtask
    // guest` reuses it).
    let agent_bin = static_bin::build("husk-agent", "husk-agent", Profile::Guest)?;
    let scratch = std::env::temp_dir().join(format!("husk-bench-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let figures = agent_vs_runc(&agent_bin, &scratch, runs)
        .with_context(|| format!("bench agent failed; its files are in {}", scratch.display()))?;
    remove_scratch(&scratch);
    for line in agent_report(&figures)? {
        println!("{line}");
    }
    Ok(())
}

/// Milliseconds per run of one operation, agent's and runc's.
#[derive(Debug, Default)]
struct Samples {
    agent: Vec<f64>,
    runc: Vec<f64>,
}

/// Everything `bench agent` measures.
#[derive(Debug)]
struct AgentFigures {
    create_start: Samples,
    exec: Samples,
}

/// Sets up both runtimes in `scratch` and measures them.
fn agent_vs_runc(agent_bin: &Path, scratch: &Path, runs: usize) -> anyhow::Result<AgentFigures> {
    let layers = scratch.join("layers");
    let layer = layers.join(LAYER);
    busybox::build_layer(&layer)?;
    let runc = Runc::new(scratch, &layer)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agent = Agent::start(agent_bin, scratch, &layers, &runtime)?;
    let create_start = alternate(
        runs,
        |i| agent.create_start(&format!("run-{i}")),
        |i| runc.create_start(&format!("run-{i}")),
    )?;
    let exec = exec_samples(&agent, &runc, runs)?;
    Ok(AgentFigures { create_start, exec })
}

/// Times `agent(i)` then `runc(i)` for each run, so both see the same
/// noise; the first failure ends the benchmark.
fn alternate(
    runs: usize,
    mut agent: impl FnMut(usize) -> anyhow::Result<()>,
    mut runc: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for i in 0..runs {
        samples.agent.push(time_ms(|| agent(i)).context("agent")?);
        samples.runc.push(time_ms(|| runc(i)).context("runc")?);
    }
    Ok(samples)
}

/// How long `f` took, in milliseconds, if it succeeded.
fn time_ms(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// Execs `/bin/true` `runs` times into a running container of each
/// runtime, which exists only for this and is removed whatever happens.
fn exec_samples(agent: &Agent, runc: &Runc, runs: usize) -> anyhow::Result<Samples> {
    agent.start_sleeper()?;
    let measured = runc.start_sleeper().and_then(|()| {
        let samples = alternate(runs, |i| agent.exec(&format!("exec-{i}")), |_| runc.exec());
        let removed = runc.delete(SLEEPER);
        let samples = samples?;
        removed.map(|()| samples)
    });
    let removed = agent.delete(SLEEPER);
    let samples = measured?;
    removed.map(|()| samples)
}

/// The benchmark's output lines.
fn agent_report(figures: &AgentFigures) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut medians = Vec::new();
    for (op, samples) in [
        ("create_start", &figures.create_start),
        ("exec", &figures.exec),
    ] {
        for (runtime, ms) in [("agent", &samples.agent), ("runc", &samples.runc)] {
            let median = stats::median(ms).with_context(|| format!("no {runtime} {op} samples"))?;
            let p95 = stats::percentile(ms, 95.0).context("no samples")?;
            lines.push(format!(
                "{runtime} {op} median_ms={median:.2} p95_ms={p95:.2} runs={}",
                ms.len()
            ));
            medians.push(median);
        }
    }
    let [cs_agent, cs_runc, exec_agent, exec_runc] = medians[..] else {
        unreachable!("two operations by two runtimes");
    };
    lines.push(format!(
        "ratio agent/runc create_start={:.2} exec={:.2}",
        cs_agent / cs_runc,
        exec_agent / exec_runc
    ));
    Ok(lines)
}

/// Removes the benchmark's files, unless something is still mounted under
/// them: deleting through a leftover mount could reach files outside.
fn remove_scratch(scratch: &Path) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left = mounts_under(&mounts, scratch);
    if !left.is_empty() {
        eprintln!(
            "husk: kept {} because these are still mounted: {}",
            scratch.display(),
            left.join(" ")
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(scratch) {
        eprintln!("husk: cannot remove {}: {e}", scratch.display());
    }
}

/// Mount points in `mountinfo` (proc(5) format) at or under `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Fails unless the process exited with code 0.
fn ensure_success(what: &str, exit: &Exit) -> anyhow::Result<()> {
    ensure!(
        exit.code == 0 && exit.signal == 0,
        "{what} did not succeed: exit_code={} signal={} reason={:?}",
        exit.code,
        exit.signal,
        exit.reason
    );
    Ok(())
}

/// husk-agent running as a root process on this host, and a connection to
/// it whose every call is bounded by [`AGENT_DEADLINE`]. The agent is
/// killed when this is dropped.
struct Agent<'rt> {
    client: AgentClient,
    runtime: &'rt Runtime,
    /// `default_spec(["/bin/true"])`, serialised once outside the timing.
    true_spec: Vec<u8>,
    /// Its process object, what an exec runs.
    true_process: Process,
    _process: AgentProcess,
}

impl<'rt> Agent<'rt> {
    /// Starts the agent with its state in `scratch` and the image layers
    /// under `layers`, connects, and sets up the sandbox.
    fn start(
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
        let true_process = serde_json::from_value(busybox::default_process(&["/bin/true"]))
            .context("the benchmark's OCI process")?;
        let agent = Self {
            client,
            runtime,
            true_spec: serde_json::to_vec(&busybox::default_spec(&["/bin/true"]))?,
            true_process,
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

    /// Creates, starts, waits for and deletes a `/bin/true` container; a
    /// failed run is force-deleted so it leaves nothing behind.
    fn create_start(&self, id: &str) -> anyhow::Result<()> {
        let result = self.runtime.block_on(self.run_to_completion(id));
        if result.is_err() {
            let _ = self.delete(id);
        }
        result.with_context(|| format!("container {id}"))
    }

    async fn run_to_completion(&self, id: &str) -> anyhow::Result<()> {
        self.create_and_start(id, self.true_spec.clone()).await?;
        let exit = self
            .client
            .wait(&ProcessRef::init(id), AGENT_DEADLINE)
            .await
            .context("WaitProcess")?;
        ensure_success("/bin/true", &exit)?;
        self.client
            .delete_container(id, false)
            .await
            .context("DeleteContainer")?;
        Ok(())
    }

    async fn create_and_start(&self, id: &str, spec: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .create_container_from_json(id, spec, &[LAYER.into()], false)
            .await
            .context("CreateContainer")?;
        self.client
            .start_container(id)
            .await
            .context("StartContainer")?;
        Ok(())
    }

    /// Creates and starts [`SLEEPER`], a container running `sleep 3600`.
    fn start_sleeper(&self) -> anyhow::Result<()> {
        let spec = serde_json::to_vec(&busybox::default_spec(&["/bin/sleep", "3600"]))?;
        let started = self.runtime.block_on(self.create_and_start(SLEEPER, spec));
        if started.is_err() {
            let _ = self.delete(SLEEPER);
        }
        started.context("the agent's sleeper container")
    }

    /// Runs `/bin/true` in [`SLEEPER`] as exec `exec_id` and waits for it.
    fn exec(&self, exec_id: &str) -> anyhow::Result<()> {
        let target = ProcessRef::exec(SLEEPER, exec_id);
        self.runtime
            .block_on(async {
                self.client
                    .exec(&target, &self.true_process, false)
                    .await
                    .context("ExecProcess")?;
                let exit = self
                    .client
                    .wait(&target, AGENT_DEADLINE)
                    .await
                    .context("WaitProcess")?;
                ensure_success("/bin/true", &exit)
            })
            .with_context(|| format!("exec {exec_id}"))
    }

    /// Force-deletes container `id`, running or not.
    fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.client.delete_container(id, true))
            .context("DeleteContainer")?;
        Ok(())
    }
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

    use super::*;

    #[test]
    fn alternate_interleaves_runs_and_stops_at_the_first_failure() {
        let calls = std::cell::RefCell::new(Vec::new());
        let record = |who: &str, i: usize| {
            calls.borrow_mut().push(format!("{who}{i}"));
            Ok(())
        };
        let samples = alternate(2, |i| record("agent", i), |i| record("runc", i)).unwrap();
        assert_eq!(*calls.borrow(), ["agent0", "runc0", "agent1", "runc1"]);
        assert_eq!((samples.agent.len(), samples.runc.len()), (2, 2));

        let err = alternate(
            3,
            |_| Ok(()),
            |i| {
                ensure!(i < 1, "boom");
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(format!("{err:#}"), "runc: boom");
    }

    #[test]
    fn agent_report_prints_medians_p95_and_ratios() {
        let figures = AgentFigures {
            create_start: Samples {
                agent: vec![10.0, 30.0, 20.0],
                runc: vec![40.0, 40.0, 100.0],
            },
            exec: Samples {
                agent: vec![1.0, 3.0],
                runc: vec![4.0, 4.0],
            },
        };
        assert_eq!(
            agent_report(&figures).unwrap(),
            [
                "agent create_start median_ms=20.00 p95_ms=30.00 runs=3",
                "runc create_start median_ms=40.00 p95_ms=100.00 runs=3",
                "agent exec median_ms=2.00 p95_ms=3.00 runs=2",
                "runc exec median_ms=4.00 p95_ms=4.00 runs=2",
                "ratio agent/runc create_start=0.50 exec=0.50",
            ]
        );
        let empty = AgentFigures {
            create_start: Samples::default(),
            exec: Samples::default(),
        };
        assert!(agent_report(&empty).is_err());
    }

    #[test]
    fn exit_statuses_other_than_a_clean_zero_fail() {
        let exited = |code, signal| Exit {
            code,
            signal,
            reason: husk_agent_client::ExitReason::Unspecified,
            finished_at_ns: 0,
        };
        assert!(ensure_success("p", &exited(0, 0)).is_ok());
        assert!(ensure_success("p", &exited(1, 0)).is_err());
        assert!(ensure_success("p", &exited(137, 9)).is_err());
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

    #[test]
    fn finds_mounts_left_under_a_folder() {
        let mountinfo = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                         90 22 0:50 / /tmp/b/agent-state/c/rootfs rw - overlay overlay rw\n\
                         91 22 0:51 / /tmp/bb rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts_under(mountinfo, Path::new("/tmp/b")),
            ["/tmp/b/agent-state/c/rootfs"]
        );
        assert!(mounts_under(mountinfo, Path::new("/tmp/c")).is_empty());
    }
}
