//! `--container-check`: containers in the guest through the agent API, so
//! the engine is proven where it runs in production: as PID 1's child in
//! the microVM, on cgroup v2, with image layers arriving over virtio-fs.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use husk_agent_client::{
    AgentClient, CgroupSample, CgroupVersion, Exit, ExitReason, ProcessRef, SandboxConfig,
};
use oci_spec::runtime::{Process, Spec};
use serde_json::{json, Value};

use super::LAYER;

/// Bound on each call and on each wait for an exit, generous for nested
/// emulation.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// Runs the checks; prints `containers ok ...` when all pass.
pub async fn check(agent: &AgentClient) -> anyhow::Result<()> {
    let agent = agent.clone().with_call_timeout(CALL_TIMEOUT);
    agent
        .setup_sandbox(SandboxConfig {
            hostname: "probe-pod".into(),
            ..Default::default()
        })
        .await
        .context("SetupSandbox")?;

    // A container that prints, under cgroup v2 limits.
    let mut hello = spec(&[
        "/bin/sh",
        "-c",
        "echo hello from a husk microVM; hostname; cat /proc/self/cgroup; \
         cd /sys/fs/cgroup && echo limits $(cat cpu.max cpu.weight memory.max pids.max)",
    ]);
    hello["linux"]["resources"] = json!({
        "memory": {"limit": 64 * MIB},
        "pids": {"limit": 32},
        "cpu": {"quota": 50000, "period": 100000, "shares": 512}
    });
    let started = Instant::now();
    let (exit, out, sample) = run(&agent, "hello", &hello).await?;
    let hello_ms = started.elapsed().as_millis();
    ensure!(exit.code == 0, "hello exited with {exit:?}: {out}");
    ensure!(
        out.starts_with("hello from a husk microVM\nhusk\n"),
        "unexpected output from the hello container: {out:?}"
    );
    ensure!(
        out.contains("0::/husk/hello"),
        "the container is not in its own cgroup v2: {out:?}"
    );
    // The container sees its own cgroup v2 directory at /sys/fs/cgroup;
    // shares 512 is cpu.weight 20 by the usual conversion.
    ensure!(
        out.contains(&format!("limits 50000 100000 20 {} 32\n", 64 * MIB)),
        "cgroup v2 files do not hold the spec's limits: {out:?}"
    );
    let stats = &sample.stats;
    // The enum, and the string API 3 hosts read.
    ensure!(
        sample.version == CgroupVersion::V2
            && stats.cgroup_version == "v2"
            && stats.memory_limit_bytes == 64 * MIB
            && stats.pids_limit == 32,
        "limits not applied as cgroup v2: {sample:?}"
    );

    // memory.max is enforced by the OOM killer, and reported as such.
    let mut oom = spec(&[
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    oom["linux"]["resources"] = json!({"memory": {"limit": 16 * MIB}});
    let (oom_exit, _, _) = run(&agent, "oom", &oom).await?;
    ensure!(
        oom_exit.reason == ExitReason::OomKilled && oom_exit.signal == 9,
        "dd over memory.max was not OOM-killed: {oom_exit:?}"
    );

    // An exec in a running container.
    let sleeper = spec(&["/bin/sleep", "600"]);
    create_start(&agent, "sleeper", &sleeper).await?;
    let exec_started = Instant::now();
    let mut process = sleeper["process"].clone();
    process["args"] = json!(["/bin/sh", "-c", "echo exec in $(hostname) as pid $$"]);
    let process: Process = serde_json::from_value(process).context("the exec's process")?;
    let e1 = ProcessRef::exec("sleeper", "e1");
    agent
        .exec(&e1, &process, false)
        .await
        .context("ExecProcess")?;
    let exec_out = output(&agent, &e1).await?;
    let exec_exit = agent
        .wait(&e1, CALL_TIMEOUT)
        .await
        .context("WaitProcess e1")?;
    let exec_ms = exec_started.elapsed().as_millis();
    ensure!(
        exec_exit.code == 0 && exec_out.starts_with("exec in husk as pid "),
        "exec: {exec_exit:?} {exec_out:?}"
    );
    agent
        .delete_container("sleeper", true)
        .await
        .context("DeleteContainer sleeper")?;
    let left = agent.list_containers().await.context("ListContainers")?;
    ensure!(left.is_empty(), "containers left: {left:?}");
    // Times include the nested rig's emulation when run there.
    println!(
        "containers ok cgroup={} hello_memory_limit_mib={} oom_reason={} \
         hello_create_to_delete_ms={hello_ms} exec_round_trip_ms={exec_ms}",
        stats.cgroup_version,
        stats.memory_limit_bytes / MIB,
        cri_reason(oom_exit.reason)
    );
    Ok(())
}

fn spec(args: &[&str]) -> Value {
    husk_tests::busybox::default_spec(args)
}

/// The CRI's word for an exit reason, as the rig test reads it.
fn cri_reason(reason: ExitReason) -> &'static str {
    match reason {
        ExitReason::Completed => "Completed",
        ExitReason::Error => "Error",
        ExitReason::Signaled => "Signaled",
        ExitReason::OomKilled => "OOMKilled",
        ExitReason::Unknown | ExitReason::Unspecified => "Unknown",
    }
}

async fn create_start(agent: &AgentClient, id: &str, spec: &Value) -> anyhow::Result<()> {
    let spec: Spec = serde_json::from_value(spec.clone())
        .with_context(|| format!("the spec of {id} is not a valid OCI spec"))?;
    agent
        .create_container(id, &spec, &[LAYER.into()], false)
        .await
        .with_context(|| format!("CreateContainer {id}"))?;
    agent
        .start_container(id)
        .await
        .with_context(|| format!("StartContainer {id}"))?;
    Ok(())
}

/// Create, start, collect output, wait, read stats, delete.
async fn run(
    agent: &AgentClient,
    id: &str,
    spec: &Value,
) -> anyhow::Result<(Exit, String, CgroupSample)> {
    create_start(agent, id, spec).await?;
    let init = ProcessRef::init(id);
    let out = output(agent, &init).await?;
    let exit = agent
        .wait(&init, CALL_TIMEOUT)
        .await
        .with_context(|| format!("WaitProcess {id}"))?;
    let sample = agent
        .container_stats(id)
        .await
        .with_context(|| format!("ContainerStats {id}"))?;
    agent
        .delete_container(id, false)
        .await
        .with_context(|| format!("DeleteContainer {id}"))?;
    Ok((exit, out, sample))
}

/// The process's stdout and stderr, interleaved as they came.
async fn output(agent: &AgentClient, process: &ProcessRef) -> anyhow::Result<String> {
    let mut reader = agent
        .read_output(process)
        .await
        .with_context(|| format!("ReadOutput {process}"))?;
    let mut out = Vec::new();
    // The client bounds opening the stream, not reading it.
    let collect = async {
        while let Some(chunk) = reader.next().await? {
            out.extend(chunk.data);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CALL_TIMEOUT, collect)
        .await
        .with_context(|| format!("output of {process} did not end"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
