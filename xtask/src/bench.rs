//! `cargo xtask bench ...`: benchmarks that print figures. Targets are
//! judged from these lines, never by timed assertions in tests.

use std::time::Duration;

use anyhow::bail;
use husk_tests::artifacts::boot_probe_command;
use husk_tests::rig::{self, Options};

use crate::rig::build_artifacts;

/// Boots the guest `runs` times per VMM in one rig run and prints one
/// `boot <vmm> ...` line per VMM.
pub fn boot(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let artifacts = build_artifacts()?;
    let command = boot_probe_command("qemu", runs, "");
    let options = Options {
        timeout: Duration::from_secs(300 + 120 * runs as u64),
        echo: false,
        ..Default::default()
    };
    let run = rig::run(&artifacts.payload(), &command, &options)?;
    print!("{}", run.output);
    if !run.success() {
        bail!("the boot benchmark failed with status {}", run.exit_code);
    }
    println!(
        "rig mode={:?} startup_ms={} total_ms={}",
        run.mode,
        run.startup.as_millis(),
        run.total.as_millis()
    );
    for line in run.output.lines().filter(|l| l.starts_with("boot ")) {
        println!("{line}");
    }
    Ok(())
}
