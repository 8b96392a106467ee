//! `cargo xtask bench pods`: pods through the CRI in the rig (or natively):
//! RunPodSandbox → first log line, one at a time and several at a time,
//! with the daemon's and the VMMs' memory. The in-rig side is
//! `husk-cri-e2e bench`.

use std::time::Duration;

use anyhow::bail;
use husk_tests::artifacts::cri_e2e_command;
use husk_tests::rig::{self, Options};

use crate::rig::build_artifacts;

pub fn pods(pods: usize, concurrency: usize) -> anyhow::Result<()> {
    if pods == 0 || concurrency == 0 {
        bail!("--pods and --concurrency must be at least 1");
    }
    let artifacts = build_artifacts()?;
    let command = cri_e2e_command(&format!("bench --pods {pods} --concurrency {concurrency}"));
    let options = Options {
        timeout: Duration::from_secs(600 + 60 * 2 * pods as u64),
        echo: true,
        ..Default::default()
    };
    let run = rig::run(&artifacts.cri_payload()?, &command, &options)?;
    if !run.success() {
        bail!("the pods benchmark failed with status {}", run.exit_code);
    }
    println!(
        "rig mode={:?} startup_ms={} total_ms={}",
        run.mode,
        run.startup.as_millis(),
        run.total.as_millis()
    );
    let lines: Vec<&str> = run
        .output
        .lines()
        .filter(|l| l.starts_with("pods "))
        .collect();
    let Some(last) = lines
        .iter()
        .rfind(|l| l.starts_with("pods serial_median_ms="))
    else {
        bail!("the benchmark printed no summary line; output above");
    };
    for line in lines
        .iter()
        .filter(|l| !l.starts_with("pods serial_median_ms="))
    {
        println!("{line}");
    }
    println!("{last}");
    Ok(())
}
