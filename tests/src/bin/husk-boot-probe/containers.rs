//! `--container-check`: containers in the guest through the agent API, so
//! the engine is proven where it runs in production: as PID 1's child in
//! the microVM, on cgroup v2, with image layers arriving over virtio-fs.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use husk_agent_client::{
    AgentClient, CgroupStats, CgroupVersion, Exit, ExitReason, ProcessRef, SandboxConfig,
};
use serde_json::{json, Value};

use super::LAYER;

/// Bound on each call, generous for nested emulation.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// Runs the checks; prints `containers ok ...` when all pass.
pub async fn check(agent: &AgentClient) -> anyhow::Result<()> {
    let client = agent.clone().with_call_timeout(CALL_TIMEOUT);
    client
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
    let (status, out, (version, stats)) = run(&client, "hello", &hello).await?;
    let hello_ms = started.elapsed().as_millis();
    ensure!(status.code == 0, "hello exited with {status:?}: {out}");
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
    ensure!(
        version == CgroupVersion::V2
            && stats.cgroup_version == "v2"
            && stats.memory_limit_bytes == 64 * MIB
            && stats.pids_limit == 32,
        "limits not applied as cgroup v2: {stats:?}"
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
    let (status, _, _) = run(&client, "oom", &oom).await?;
    ensure!(
        status.reason == ExitReason::OomKilled && status.signal == 9,
        "dd over memory.max was not OOM-killed: {status:?}"
    );

    // An exec in a running container.
    let sleeper = spec(&["/bin/sleep", "600"]);
    create_start(&client, "sleeper", &sleeper).await?;
    let exec_started = Instant::now();
    let mut process = sleeper["process"].clone();
    process["args"] = json!(["/bin/sh", "-c", "echo exec in $(hostname) as pid $$"]);
    let process = serde_json::from_value(process).context("the exec's OCI process")?;
    let exec = ProcessRef::exec("sleeper", "e1");
    client
        .exec(&exec, &process, false)
        .await
        .context("ExecProcess")?;
    let exec_out = output(&client, &exec).await?;
    let exec_status = client
        .wait(&exec, CALL_TIMEOUT)
        .await
        .context("WaitProcess e1")?;
    let exec_ms = exec_started.elapsed().as_millis();
    ensure!(
        exec_status.code == 0 && exec_out.starts_with("exec in husk as pid "),
        "exec: {exec_status:?} {exec_out:?}"
    );
    client
        .delete_container("sleeper", true)
        .await
        .context("DeleteContainer sleeper")?;
    let left = client.list_containers().await.context("ListContainers")?;
    ensure!(left.is_empty(), "containers left: {left:?}");
    // Times include the nested rig's emulation when run there.
    println!(
        "containers ok cgroup={} hello_memory_limit_mib={} oom_reason={} \
         hello_create_to_delete_ms={hello_ms} exec_round_trip_ms={exec_ms}",
        stats.cgroup_version,
        stats.memory_limit_bytes / MIB,
        if status.reason == ExitReason::OomKilled {
            "OOMKilled"
        } else {
            "other"
        }
    );
    Ok(())
}

fn spec(args: &[&str]) -> Value {
    husk_tests::busybox::default_spec(args)
}

async fn create_start(client: &AgentClient, id: &str, spec: &Value) -> anyhow::Result<()> {
    client
        .create_container_from_json(id, serde_json::to_vec(spec)?, &[LAYER.into()], false)
        .await
        .with_context(|| format!("CreateContainer {id}"))?;
    client
        .start_container(id)
        .await
        .with_context(|| format!("StartContainer {id}"))?;
    Ok(())
}

/// Create, start, collect output, wait, read stats, delete.
async fn run(
    client: &AgentClient,
    id: &str,
    spec: &Value,
) -> anyhow::Result<(Exit, String, (CgroupVersion, CgroupStats))> {
    create_start(client, id, spec).await?;
    let init = ProcessRef::init(id);
    let out = output(client, &init).await?;
    let status = client
        .wait(&init, CALL_TIMEOUT)
        .await
        .with_context(|| format!("WaitProcess {id}"))?;
    let sample = client
        .container_stats(id)
        .await
        .with_context(|| format!("ContainerStats {id}"))?;
    client
        .delete_container(id, false)
        .await
        .with_context(|| format!("DeleteContainer {id}"))?;
    Ok((status, out, (sample.version, sample.stats)))
}

/// Everything the process writes, until its output ends.
async fn output(client: &AgentClient, process: &ProcessRef) -> anyhow::Result<String> {
    let mut reader = client
        .read_output(process)
        .await
        .with_context(|| format!("ReadOutput {process}"))?;
    let mut out = Vec::new();
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
