//! `cargo xtask demo`: the main job at this stage of the project. It builds
//! everything, boots a husk guest with husk-vmm on real KVM (natively where
//! this host's KVM can boot Linux, otherwise in the nested rig), and shows
//! husk-agent answering over hybrid vsock and reading and writing the
//! shared folder before it powers the VM off. It grows into a real pod
//! through CRI once the daemon exists.

use anyhow::bail;
use husk_tests::artifacts::boot_probe_command;
use husk_tests::rig::{self, Options};

use crate::rig::build_artifacts;

pub fn run() -> anyhow::Result<()> {
    let artifacts = build_artifacts()?;
    let command = boot_probe_command("husk-vmm", 1, "--verbose --shared-dir-check");
    let run = rig::run(&artifacts.payload(), &command, &Options::default())?;
    if !run.success() {
        bail!("the demo boot failed with status {}", run.exit_code);
    }
    println!(
        "husk demo: husk-vmm booted our guest on KVM ({:?} mode); husk-agent answered over hybrid vsock, shared a folder with the host and powered the VM off",
        run.mode
    );
    Ok(())
}
