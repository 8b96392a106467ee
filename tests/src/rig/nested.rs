//! Running a rig command inside the nested L1 host.

use std::path::Path;
use std::process::{Command, Stdio};

use super::l1::{self, L1Assets, PAYLOAD_DISK_TAG};
use super::tsc;
use super::watch::watch;
use super::{Collect, Mode, Options, Payload, RigError, RigRun};

/// Boots L1 with the payload disk and runs `command` in it.
pub fn run(payload: &Payload, command: &str, options: &Options) -> Result<RigRun, RigError> {
    if let Some(collect) = &options.collect {
        collect.check()?;
    }
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
    let collected = match &options.collect {
        Some(collect) => collect_from_disk(&disk, &dir.join("collected"), collect),
        None => Ok(()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let run = result?;
    collected?;
    Ok(run)
}

/// Copies `collect.from` out of the payload disk L1 wrote (and unmounted
/// before powering off) with debugfs, which reads ext4 without mounting it.
fn collect_from_disk(disk: &Path, staging: &Path, collect: &Collect) -> Result<(), RigError> {
    std::fs::create_dir_all(staging)?;
    let request = format!("rdump /{} {}", collect.from.display(), staging.display());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(&request)
        .arg(disk)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RigError::Setup(anyhow::anyhow!("cannot run debugfs (e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(RigError::Setup(anyhow::anyhow!(
            "debugfs {request:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let name = collect.from.file_name().unwrap_or_default();
    collect.take_from(&staging.join(name))
}

/// QEMU under software emulation, with an AMD CPU that has SVM (recipe from
/// RIG.md), booting the cloud kernel as L1. AppArmor, which Debian's kernel
/// enables by default, is switched off so that L1 is a host like the ones
/// it stands for (these machines have none): with it on, critest's
/// AppArmor specs run and try to load profiles with tools L1 lacks.
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
            "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=3 tsc_early_khz={} tsc=reliable \
             apparmor=0",
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
