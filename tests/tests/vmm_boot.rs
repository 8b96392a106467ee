//! husk-vmm end to end, in the rig (or natively on a host whose KVM boots
//! Linux): our VMM boots our vmlinux and initramfs with 1 and with 2 vCPUs,
//! the host gets Health from husk-agent over the VMM's hybrid vsock socket,
//! a file crosses the virtio-fs share each way, and Shutdown ends husk-vmm
//! with status 0 (the boot probe fails on anything else).
//!
//! Both boots share one rig run: starting the rig's L1 host costs more than
//! a boot.

use std::time::Duration;

use husk_tests::artifacts::{boot_probe_command, Artifacts};
use husk_tests::rig::{self, Options};

#[test]
fn husk_vmm_boots_our_guest_on_1_and_2_vcpus_with_vsock_and_shared_dir() {
    let artifacts = Artifacts::from_env().unwrap();
    let options = Options {
        timeout: Duration::from_secs(900),
        ..Default::default()
    };
    let boots: Vec<String> = [1, 2]
        .iter()
        .map(|vcpus| {
            boot_probe_command(
                "husk-vmm",
                1,
                &format!("--vcpus {vcpus} --shared-dir-check --verbose"),
            )
        })
        .collect();
    let command = boots.join(" && ");
    let run = rig::run(&artifacts.payload(), &command, &options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("rig mode {:?}, start-up {:?}", run.mode, run.startup);
    assert!(
        run.success(),
        "boot probe failed ({}):\n{}",
        run.exit_code,
        run.output
    );
    let lines: Vec<&str> = run.output.lines().collect();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("guest| husk-agent ready "),
        2,
        "want one ready line per boot:\n{}",
        run.output
    );
    assert_eq!(
        count("health ok version="),
        2,
        "want one Health answer per boot:\n{}",
        run.output
    );
    assert_eq!(
        count("shared-dir ok "),
        2,
        "want the shared-dir check to pass in each boot:\n{}",
        run.output
    );
    for vcpus in [1, 2] {
        let config = format!(" config=husk-vmm,vcpus={vcpus},mem=256M+virtio-fs");
        let summary = lines
            .iter()
            .find(|l| l.starts_with("boot husk-vmm ") && l.ends_with(&config))
            .unwrap_or_else(|| panic!("no summary line for {vcpus} vCPUs:\n{}", run.output));
        assert!(summary.contains(" runs=1 "), "{summary}");
        assert!(summary.contains(" overhead_mib="), "{summary}");
    }
}
