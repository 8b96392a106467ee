//! `cargo xtask demo`: the main job. It builds everything, then (natively
//! where this host's KVM can boot Linux, otherwise in the nested rig)
//! starts a local registry with a busybox image, starts the husk daemon,
//! and through the CRI pulls the image, runs a pod in its own microVM with
//! a container that prints `hello from a husk microVM`, reads the line
//! from the container's CRI log file and removes everything.

use anyhow::bail;
use husk_tests::artifacts::cri_e2e_command;
use husk_tests::rig::{self, Options};

use crate::rig::build_artifacts;

pub fn run() -> anyhow::Result<()> {
    let artifacts = build_artifacts()?;
    let options = Options {
        echo: false,
        ..Default::default()
    };
    let run = rig::run(
        &artifacts.cri_payload()?,
        &cri_e2e_command("demo"),
        &options,
    )?;
    for line in run.output.lines().filter(|l| l.starts_with("demo: ")) {
        println!("{line}");
    }
    if !run.success() {
        eprintln!("{}", run.output);
        bail!("the demo failed with status {}", run.exit_code);
    }
    println!(
        "husk demo: a pod ran through the CRI in its own microVM on KVM ({:?} mode)",
        run.mode
    );
    Ok(())
}
