//! `cargo xtask rig -- <command>`: run a command in the nested KVM rig (or
//! natively where this host's KVM can boot Linux) with the guest image and
//! the in-rig programs available under `$HUSK_RIG_DIR`.

use husk_tests::artifacts::Artifacts;
use husk_tests::rig::{self, Options, Payload, RigRun};

use crate::guest;
use crate::static_bin::{self, Profile};

/// Builds (or reuses) everything a rig run needs from the workspace.
pub fn build_artifacts() -> anyhow::Result<Artifacts> {
    let image = guest::build()?;
    let boot_probe = static_bin::build("husk-tests", "husk-boot-probe", Profile::Release)?;
    // Static like the probe: the rig's L1 host has no dynamic loader setup
    // for our programs.
    let husk_vmm = static_bin::build("husk-vmm", "husk-vmm", Profile::Release)?;
    let husk_daemon = static_bin::build("husk", "husk", Profile::Release)?;
    let cri_e2e = static_bin::build("husk-cri-tests", "husk-cri-e2e", Profile::Release)?;
    Ok(Artifacts {
        vmlinux: image.vmlinux,
        initramfs: image.initramfs,
        boot_probe,
        husk_vmm,
        husk_daemon,
        cri_e2e,
    })
}

/// Runs `command` in the rig; `bare` skips building the workspace payload.
pub fn run(command: &str, bare: bool, options: &Options) -> anyhow::Result<RigRun> {
    let payload = if bare {
        Payload::new()
    } else {
        build_artifacts()?.payload()
    };
    let run = rig::run(&payload, command, options)?;
    eprintln!(
        "husk-rig: {:?} mode, exit status {}, rig start-up {} ms, total {} ms",
        run.mode,
        run.exit_code,
        run.startup.as_millis(),
        run.total.as_millis()
    );
    Ok(run)
}
