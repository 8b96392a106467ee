//! The agent's container engine where it runs in production: husk-vmm
//! boots our guest in the rig (or natively where KVM boots Linux), a
//! busybox image layer reaches the guest over virtio-fs, and containers run
//! through the agent API as PID 1's children on cgroup v2 — output, limits,
//! an OOM kill reported as OOMKilled, an exec (the probe's
//! `--container-check` fails on anything else).

use std::time::Duration;

use husk_tests::artifacts::{boot_probe_command, Artifacts, RIG_BUSYBOX};
use husk_tests::rig::{self, Options};

#[test]
fn containers_run_in_the_microvm_on_cgroup_v2() {
    let artifacts = Artifacts::from_env().unwrap();
    let busybox = husk_tests::busybox::host_binary().unwrap();
    let payload = artifacts.payload().file(busybox, RIG_BUSYBOX);
    let command = boot_probe_command(
        "husk-vmm",
        1,
        &format!("--container-check \"$HUSK_RIG_DIR/{RIG_BUSYBOX}\" --verbose --timeout-secs 300"),
    );
    let options = Options {
        timeout: Duration::from_secs(900),
        ..Default::default()
    };
    let run = rig::run(&payload, &command, &options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("rig mode {:?}, start-up {:?}", run.mode, run.startup);
    assert!(
        run.success(),
        "boot probe failed ({}):\n{}",
        run.exit_code,
        run.output
    );
    let ok = run
        .output
        .lines()
        .find(|l| l.starts_with("containers ok "))
        .unwrap_or_else(|| panic!("no `containers ok` line:\n{}", run.output));
    assert!(ok.contains("cgroup=v2"), "{ok}");
    assert!(ok.contains("oom_reason=OOMKilled"), "{ok}");
}
