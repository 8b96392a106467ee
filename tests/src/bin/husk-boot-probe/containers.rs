//! `--container-check`: containers in the guest through the agent API, so
//! the engine is proven where it runs in production: as PID 1's child in
//! the microVM, on cgroup v2, with image layers arriving over virtio-fs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use husk_agent_client::AgentClient;
use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::agent_client::AgentClient as RawClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::LAYER;

/// Bound on each call, generous for nested emulation.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// Runs the checks; prints `containers ok ...` when all pass.
pub async fn check(agent: &AgentClient) -> anyhow::Result<()> {
    let mut client = agent.raw();
    bounded(client.setup_sandbox(pb::SetupSandboxRequest {
        hostname: "probe-pod".into(),
        ..Default::default()
    }))
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
    let (status, out, stats) = run(&mut client, "hello", &hello).await?;
    let hello_ms = started.elapsed().as_millis();
    ensure!(status.exit_code == 0, "hello exited with {status:?}: {out}");
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
        stats.cgroup_version == "v2"
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
    let (status, _, _) = run(&mut client, "oom", &oom).await?;
    ensure!(
        status.reason == "OOMKilled" && status.signal == 9,
        "dd over memory.max was not OOM-killed: {status:?}"
    );

    // An exec in a running container.
    let sleeper = spec(&["/bin/sleep", "600"]);
    create_start(&mut client, "sleeper", &sleeper).await?;
    let exec_started = Instant::now();
    let mut process = sleeper["process"].clone();
    process["args"] = json!(["/bin/sh", "-c", "echo exec in $(hostname) as pid $$"]);
    bounded(client.exec_process(pb::ExecProcessRequest {
        container_id: "sleeper".into(),
        exec_id: "e1".into(),
        process_json: serde_json::to_vec(&process)?,
        stdin: false,
    }))
    .await
    .context("ExecProcess")?;
    let exec_out = output(&mut client, "sleeper", "e1").await?;
    let exec_status = wait(&mut client, "sleeper", "e1").await?;
    let exec_ms = exec_started.elapsed().as_millis();
    ensure!(
        exec_status.exit_code == 0 && exec_out.starts_with("exec in husk as pid "),
        "exec: {exec_status:?} {exec_out:?}"
    );
    bounded(client.delete_container(pb::DeleteContainerRequest {
        container_id: "sleeper".into(),
        force: true,
    }))
    .await
    .context("DeleteContainer sleeper")?;
    let left = bounded(client.list_containers(pb::ListContainersRequest {}))
        .await?
        .containers;
    ensure!(left.is_empty(), "containers left: {left:?}");
    // Times include the nested rig's emulation when run there.
    println!(
        "containers ok cgroup={} hello_memory_limit_mib={} oom_reason={} \
         hello_create_to_delete_ms={hello_ms} exec_round_trip_ms={exec_ms}",
        stats.cgroup_version,
        stats.memory_limit_bytes / MIB,
        status.reason
    );
    Ok(())
}

fn spec(args: &[&str]) -> Value {
    husk_tests::busybox::default_spec(args)
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => bail!("{status:?}"),
        Err(_) => bail!("no answer within {CALL_TIMEOUT:?}"),
    }
}

async fn create_start(
    client: &mut RawClient<Channel>,
    id: &str,
    spec: &Value,
) -> anyhow::Result<()> {
    bounded(client.create_container(pb::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: serde_json::to_vec(spec)?,
        layers: vec![LAYER.into()],
        stdin: false,
    }))
    .await
    .with_context(|| format!("CreateContainer {id}"))?;
    bounded(client.start_container(pb::StartContainerRequest {
        container_id: id.into(),
    }))
    .await
    .with_context(|| format!("StartContainer {id}"))?;
    Ok(())
}

/// Create, start, collect output, wait, read stats, delete.
async fn run(
    client: &mut RawClient<Channel>,
    id: &str,
    spec: &Value,
) -> anyhow::Result<(pb::ExitStatus, String, pb::CgroupStats)> {
    create_start(client, id, spec).await?;
    let out = output(client, id, "").await?;
    let status = wait(client, id, "").await?;
    let stats = bounded(client.container_stats(pb::ContainerStatsRequest {
        container_id: id.into(),
    }))
    .await
    .with_context(|| format!("ContainerStats {id}"))?
    .stats
    .unwrap_or_default();
    bounded(client.delete_container(pb::DeleteContainerRequest {
        container_id: id.into(),
        force: false,
    }))
    .await
    .with_context(|| format!("DeleteContainer {id}"))?;
    Ok((status, out, stats))
}

async fn output(
    client: &mut RawClient<Channel>,
    id: &str,
    exec_id: &str,
) -> anyhow::Result<String> {
    let mut stream = bounded(client.read_output(pb::ReadOutputRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
    }))
    .await
    .with_context(|| format!("ReadOutput {id}"))?;
    let mut out = Vec::new();
    let collect = async {
        while let Some(chunk) = stream.message().await? {
            out.extend(chunk.data);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CALL_TIMEOUT, collect)
        .await
        .with_context(|| format!("output of {id} did not end"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn wait(
    client: &mut RawClient<Channel>,
    id: &str,
    exec_id: &str,
) -> anyhow::Result<pb::ExitStatus> {
    bounded(client.wait_process(pb::WaitProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
    }))
    .await
    .with_context(|| format!("WaitProcess {id}"))?
    .status
    .context("WaitProcess without a status")
}
