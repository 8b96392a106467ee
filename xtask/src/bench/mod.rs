//! `cargo xtask bench ...`: benchmarks that print figures. Targets are
//! judged from these lines, never by timed assertions in tests.

use std::time::Duration;

use anyhow::bail;
use husk_tests::artifacts::boot_probe_command;
use husk_tests::rig::{self, Options};

use crate::rig::build_artifacts;

mod agent;
mod agent_vs_runc;
mod pods;
mod runc;
mod workload;

pub use agent_vs_runc::agent;
pub use pods::pods;

/// The VMMs compared, booted alternately in one rig run so both see the
/// same emulation noise. QEMU stays in its fastest fair configuration (the
/// probe's `microvm,rtc=on,acpi=off` + vhost-vsock).
const VMMS: &str = "qemu,husk-vmm";

/// Boots the guest `runs` times per VMM (QEMU and husk-vmm alternately) in
/// one rig run and prints one `boot <vmm> ...` line per VMM, then
/// `ratio husk-vmm/qemu median=<x.xx>`.
pub fn boot(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let artifacts = build_artifacts()?;
    let command = boot_probe_command(VMMS, runs, "");
    let options = Options {
        // Two VMMs per run now.
        timeout: Duration::from_secs(300 + 2 * 120 * runs as u64),
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
    let summary = summary_lines(&run.output);
    if !summary.iter().any(|l| l.starts_with("ratio ")) {
        bail!("the boot probe printed no ratio line; output above");
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// The probe's `boot ...` lines, then its `ratio ...` line last.
fn summary_lines(output: &str) -> Vec<&str> {
    let boots = output.lines().filter(|l| l.starts_with("boot "));
    let ratio = output.lines().filter(|l| l.starts_with("ratio "));
    boots.chain(ratio).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keeps_boot_lines_then_the_ratio() {
        let output = "run 1 vmm=qemu ready_ms=1\nboot qemu median_ms=2\n\
                      ratio husk-vmm/qemu median=0.50\nboot husk-vmm median_ms=1\nnoise\n";
        assert_eq!(
            summary_lines(output),
            [
                "boot qemu median_ms=2",
                "boot husk-vmm median_ms=1",
                "ratio husk-vmm/qemu median=0.50"
            ]
        );
    }
}
