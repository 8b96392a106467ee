//! Running a rig command directly on a host whose KVM can boot Linux.

use std::process::{Command, Stdio};

use super::watch::watch;
use super::{l1, Mode, Options, Payload, RigError, RigRun};

/// Runs `command` on this host with the payload in a scratch folder.
pub fn run(payload: &Payload, command: &str, options: &Options) -> Result<RigRun, RigError> {
    eprintln!("husk-rig: this host's KVM can boot Linux: running natively, not in the nested rig");
    crate::debian::ensure_installed(l1::HOST_PACKAGES)?;
    // QEMU's vhost-vsock device needs the host's vhost_vsock module.
    let _ = Command::new("modprobe").arg("vhost_vsock").status();
    if let Some(collect) = &options.collect {
        collect.check()?;
    }
    let dir = super::scratch_dir("native")?;
    payload.materialize(&dir, command)?;
    let child = Command::new("sh")
        .arg(super::RUNNER_FILE)
        .current_dir(&dir)
        .env("HUSK_RIG_DIR", &dir)
        .env("HUSK_RIG_MODE", "native")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = watch(child, Mode::Native, command, options);
    let collected = match &options.collect {
        Some(collect) => collect.take_from(&dir.join(&collect.from)),
        None => Ok(()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let run = result?;
    collected?;
    Ok(run)
}
