//! `cargo xtask bench pods`: time from RunPodSandbox to the container's
//! first log line, pods one at a time and four at a time, with the
//! daemon's and each VMM's resident memory and the guest memory a pod
//! uses.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use k8s_cri::v1 as cri;

use crate::client::Cri;
use crate::daemon::{rss_kib, vmm_processes_mentioning, Daemon};
use crate::fixtures::{pod_config, shell_container};
use crate::suite::{create_and_start, pull, run_pod, wait_log_line, Inputs};

/// What one pod start measured.
#[derive(Debug, Clone, Copy)]
struct PodSample {
    first_log_line: Duration,
    vmm_rss_kib: u64,
    guest_used_bytes: u64,
}

/// One pod: RunPodSandbox → create → start → first log line; then the
/// VMM's RSS and the guest's memory in use; then teardown.
async fn one_pod(mut cri: Cri, inputs: &Inputs, name: String) -> anyhow::Result<PodSample> {
    let log_dir = inputs.logs.join(&name);
    std::fs::create_dir_all(&log_dir)?;
    let config = pod_config(&name, &log_dir.display().to_string());
    let started = Instant::now();
    let pod = run_pod(&mut cri, config.clone()).await?;
    let script = "echo hello from a husk microVM; while true; do sleep 1; done";
    create_and_start(
        &mut cri,
        &pod,
        &config,
        shell_container("bench", &inputs.images.single, script),
    )
    .await?;
    wait_log_line(
        &log_dir.join("bench.log"),
        "hello from a husk microVM",
        Duration::from_secs(300),
    )
    .await?;
    let first_log_line = started.elapsed();
    let vmm = vmm_processes_mentioning(&format!("pods/{pod}/vsock.sock"));
    ensure!(vmm.len() == 1, "pod {name}: VMM processes {vmm:?}");
    let vmm_rss_kib = rss_kib(vmm[0]).unwrap_or(0);
    let stats = cri
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no pod stats")?;
    let guest_used_bytes = stats
        .linux
        .and_then(|l| l.memory)
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .context("RemovePodSandbox")?;
    Ok(PodSample {
        first_log_line,
        vmm_rss_kib,
        guest_used_bytes,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(label: &str, samples: &[PodSample]) -> f64 {
    let mut ms: Vec<f64> = samples
        .iter()
        .map(|s| s.first_log_line.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&ms, 50.0);
    println!(
        "pods {label} first_log_line median_ms={median:.0} p95_ms={:.0} min_ms={:.0} max_ms={:.0} runs={}",
        percentile(&ms, 95.0),
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
    median
}

fn median_u64(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

pub async fn run(inputs: &Inputs, pods: usize, concurrency: usize) -> anyhow::Result<()> {
    let (mut daemon, mut cri) = Daemon::start(inputs.daemon.clone()).await?;
    let result = measure(inputs, &daemon, &mut cri, pods, concurrency).await;
    if result.is_err() {
        eprintln!("bench: daemon log tail:\n{}", daemon.log_tail());
    }
    let _ = daemon.stop();
    result
}

async fn measure(
    inputs: &Inputs,
    daemon: &Daemon,
    cri: &mut Cri,
    pods: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    pull(cri, &inputs.images.single).await?;
    let daemon_pid = daemon.pid().context("daemon not running")?;
    let idle_rss = rss_kib(daemon_pid).unwrap_or(0);
    // One pod first, untimed: page cache and the image's first use.
    one_pod(cri.clone(), inputs, "warmup".into()).await?;

    let mut serial = Vec::with_capacity(pods);
    for i in 0..pods {
        let sample = one_pod(cri.clone(), inputs, format!("serial-{i}")).await?;
        eprintln!("bench: serial pod {i}: {:?}", sample.first_log_line);
        serial.push(sample);
    }
    let mut concurrent = Vec::with_capacity(pods);
    let mut peak_daemon_rss = rss_kib(daemon_pid).unwrap_or(0);
    for batch in 0..pods.div_ceil(concurrency) {
        let mut tasks = Vec::new();
        for j in 0..concurrency.min(pods - batch * concurrency) {
            let name = format!("conc-{batch}-{j}");
            let cri = cri.clone();
            let inputs = inputs.clone();
            tasks.push(tokio::spawn(
                async move { one_pod(cri, &inputs, name).await },
            ));
        }
        for task in tasks {
            concurrent.push(task.await??);
        }
        peak_daemon_rss = peak_daemon_rss.max(rss_kib(daemon_pid).unwrap_or(0));
        eprintln!("bench: concurrent batch {batch} done");
    }
    let serial_median = summary("serial", &serial);
    let concurrent_median = summary(&format!("concurrent{concurrency}"), &concurrent);
    let all: Vec<PodSample> = serial.iter().chain(&concurrent).copied().collect();
    let vmm_rss_mib = median_u64(all.iter().map(|s| s.vmm_rss_kib).collect()) as f64 / 1024.0;
    let guest_mib =
        median_u64(all.iter().map(|s| s.guest_used_bytes).collect()) as f64 / (1 << 20) as f64;
    println!(
        "pods memory daemon_rss_mib idle={:.1} peak={:.1} vmm_rss_mib median={vmm_rss_mib:.1} guest_used_mib median={guest_mib:.1}",
        idle_rss as f64 / 1024.0,
        peak_daemon_rss as f64 / 1024.0
    );
    println!(
        "pods serial_median_ms={serial_median:.0} concurrent{concurrency}_median_ms={concurrent_median:.0} vmm_rss_mib={vmm_rss_mib:.1}"
    );
    Ok(())
}
