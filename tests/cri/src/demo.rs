//! The README's main job: one pod through the CRI whose container prints
//! `hello from a husk microVM`, then everything torn down.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1 as cri;

use crate::daemon::Daemon;
use crate::fixtures::{pod_config, shell_container};
use crate::logs;
use crate::suite::{create_and_start, pull, run_pod, wait_exited, Inputs};

pub async fn run(inputs: &Inputs) -> anyhow::Result<()> {
    let (mut daemon, mut cri) = Daemon::start(inputs.daemon.clone()).await?;
    let started = Instant::now();
    let image = &inputs.images.single;
    pull(&mut cri, image).await?;
    println!("demo: pulled {image}");
    let log_dir = inputs.logs.join("demo");
    std::fs::create_dir_all(&log_dir)?;
    let config = pod_config("demo", &log_dir.display().to_string());
    let pod = run_pod(&mut cri, config.clone()).await?;
    println!("demo: pod {} is ready (its own microVM)", &pod[..12]);
    let container = create_and_start(
        &mut cri,
        &pod,
        &config,
        shell_container("hello", image, "cat /husk/hello"),
    )
    .await?;
    let status = wait_exited(&mut cri, &container, Duration::from_secs(120)).await?;
    let records = logs::read(&log_dir.join("hello.log"))?;
    for line in logs::lines(&records, "stdout") {
        println!("demo: container says: {line}");
    }
    let said = logs::lines(&records, "stdout")
        .iter()
        .any(|l| l == "hello from a husk microVM");
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .context("RemovePodSandbox")?;
    let _ = daemon.stop();
    anyhow::ensure!(
        status.exit_code == 0 && said,
        "the demo container did not print its line: {status:?} {records:?}"
    );
    println!(
        "demo: ok: pod ran, printed, exited {} and was removed in {} ms",
        status.exit_code,
        started.elapsed().as_millis()
    );
    Ok(())
}
