//! The CRI end-to-end suite in the rig (natively where KVM boots Linux):
//! a local registry with busybox test images, the husk daemon, pods in
//! microVMs, a daemon SIGKILLed and restarted in the middle. The suite's
//! steps are in `husk_cri_tests::suite`; this runs them and checks the
//! verdict line.

use std::time::Duration;

use husk_tests::artifacts::{cri_e2e_command, Artifacts};
use husk_tests::rig::{self, Options};

#[test]
fn cri_suite_runs_pods_in_microvms() {
    let artifacts = Artifacts::from_env().unwrap();
    let payload = artifacts.cri_payload().unwrap();
    let options = Options {
        timeout: Duration::from_secs(1500),
        ..Default::default()
    };
    let run =
        rig::run(&payload, &cri_e2e_command("suite"), &options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "rig mode {:?}, start-up {:?}, total {:?}",
        run.mode, run.startup, run.total
    );
    assert!(
        run.success(),
        "CRI suite failed ({}):\n{}",
        run.exit_code,
        run.output
    );
    assert!(
        run.output.lines().any(|l| l.starts_with("cri-e2e ok ")),
        "no verdict line:\n{}",
        run.output
    );
}
