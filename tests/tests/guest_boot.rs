//! The foundation's end-to-end proof: in the rig (or natively on a host
//! whose KVM boots Linux), QEMU boots our vmlinux and initramfs on real KVM,
//! husk-agent prints its ready line, a client gets its health answer over
//! vsock, and the guest powers off on request, ending QEMU with status 0.

use std::time::Duration;

use husk_tests::artifacts::{boot_probe_command, Artifacts};
use husk_tests::rig::{self, Options};

#[test]
fn qemu_boots_our_guest_and_the_agent_answers_over_vsock() {
    let artifacts = Artifacts::from_env().unwrap();
    let options = Options {
        timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let command = boot_probe_command("qemu", 1, "--verbose");
    let run = rig::run(&artifacts.payload(), &command, &options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("rig mode {:?}, start-up {:?}", run.mode, run.startup);
    assert!(
        run.success(),
        "boot probe failed ({}):\n{}",
        run.exit_code,
        run.output
    );
    let lines: Vec<&str> = run.output.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.contains(prefix));
    assert!(
        has("guest| husk-agent ready "),
        "no ready line from the guest:\n{}",
        run.output
    );
    assert!(
        has("health ok version="),
        "no health answer:\n{}",
        run.output
    );
    let summary = lines
        .iter()
        .find(|l| l.starts_with("boot qemu "))
        .unwrap_or_else(|| panic!("no summary line:\n{}", run.output));
    assert!(summary.contains(" runs=1 "), "{summary}");
}
