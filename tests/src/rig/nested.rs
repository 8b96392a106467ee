//! Running a rig command inside the nested L1 host.

use std::path::Path;
use std::process::{Command, Stdio};

use super::l1::{self, L1Assets, PAYLOAD_DISK_TAG};
use super::tsc;
use super::watch::watch;
use super::{Mode, Options, Payload, RigError, RigRun};

/// Boots L1 with the payload disk and runs `command` in it.
pub fn run(payload: &Payload, command: &str, options: &Options) -> Result<RigRun, RigError> {
    let assets = l1::prepare()?;
    let dir = super::scratch_dir("nested")?;
    let stage = dir.join("payload");
    std::fs::create_dir_all(&stage)?;
    payload.materialize(&stage, command)?;
    std::fs::write(stage.join(PAYLOAD_DISK_TAG), b"")?;
    let disk = dir.join("payload.ext4");
    l1::make_ext4(&stage, &disk, "husk-run")?;
    let child = l1_command(&assets, &disk, options)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = watch(child, Mode::Nested, command, options);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// QEMU under software emulation, with an AMD CPU that has SVM (recipe from
/// RIG.md), booting the cloud kernel as L1.
fn l1_command(assets: &L1Assets, payload_disk: &Path, options: &Options) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "EPYC-v3,+svm", "-M", "microvm"])
        .args(["-m", &options.memory_mib.to_string()])
        .args(["-smp", &options.cpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&assets.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=3 tsc_early_khz={} tsc=reliable",
            tsc::host_tsc_khz()
        ))
        .arg("-drive")
        .arg(drive("sys", &assets.system_disk, true))
        .args(["-device", "virtio-blk-device,drive=sys"])
        .arg("-drive")
        .arg(drive("run", payload_disk, false))
        .args(["-device", "virtio-blk-device,drive=run"]);
    cmd
}

fn drive(id: &str, file: &Path, readonly: bool) -> String {
    let mut spec = format!("id={id},file={},format=raw,if=none", file.display());
    if readonly {
        spec.push_str(",readonly=on");
    }
    spec
}
