//! The workspace's build outputs that rig runs need, and where they land
//! under `$HUSK_RIG_DIR`.
//!
//! `cargo xtask` builds them and passes their paths to the test binaries in
//! environment variables; the rig tests fail (loudly) without them.

use std::path::PathBuf;

use crate::rig::Payload;

/// Environment variables carrying the artifacts' paths to tests.
pub const ENV_VMLINUX: &str = "HUSK_GUEST_VMLINUX";
pub const ENV_INITRAMFS: &str = "HUSK_GUEST_INITRAMFS";
pub const ENV_BOOT_PROBE: &str = "HUSK_BOOT_PROBE";
pub const ENV_HUSK_VMM: &str = "HUSK_VMM";

/// Paths relative to `$HUSK_RIG_DIR` inside a rig run.
pub const RIG_VMLINUX: &str = "guest/vmlinux";
pub const RIG_INITRAMFS: &str = "guest/initramfs.cpio";
pub const RIG_BOOT_PROBE: &str = "bin/husk-boot-probe";
pub const RIG_HUSK_VMM: &str = "bin/husk-vmm";

/// Built outputs of the workspace.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// Statically linked, so it runs in the rig's busybox L1 host.
    pub boot_probe: PathBuf,
    /// Our VMM, statically linked for the same reason.
    pub husk_vmm: PathBuf,
}

impl Artifacts {
    /// Reads the artifacts' paths from the environment `cargo xtask test`
    /// sets; the error says how to get them.
    pub fn from_env() -> anyhow::Result<Artifacts> {
        let get = |name: &str| -> anyhow::Result<PathBuf> {
            let path = std::env::var_os(name).map(PathBuf::from).ok_or_else(|| {
                anyhow::anyhow!(
                    "{name} is not set: the rig tests need the guest image and in-rig \
                     programs, which `cargo xtask test` builds and passes to them"
                )
            })?;
            anyhow::ensure!(path.is_file(), "{name}={} does not exist", path.display());
            Ok(path)
        };
        Ok(Artifacts {
            vmlinux: get(ENV_VMLINUX)?,
            initramfs: get(ENV_INITRAMFS)?,
            boot_probe: get(ENV_BOOT_PROBE)?,
            husk_vmm: get(ENV_HUSK_VMM)?,
        })
    }

    /// The environment that [`Artifacts::from_env`] reads.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            (ENV_VMLINUX, self.vmlinux.clone()),
            (ENV_INITRAMFS, self.initramfs.clone()),
            (ENV_BOOT_PROBE, self.boot_probe.clone()),
            (ENV_HUSK_VMM, self.husk_vmm.clone()),
        ]
    }

    /// The payload of a rig run: everything above at its `RIG_*` path.
    pub fn payload(&self) -> Payload {
        Payload::new()
            .file(&self.vmlinux, RIG_VMLINUX)
            .file(&self.initramfs, RIG_INITRAMFS)
            .file(&self.boot_probe, RIG_BOOT_PROBE)
            .file(&self.husk_vmm, RIG_HUSK_VMM)
    }
}

/// The rig command line that boots our guest `runs` times under `vmm` with
/// the boot probe. `vmm` is one VMM or a comma-separated list booted
/// alternately (`qemu,husk-vmm`); husk-vmm is the payload's.
pub fn boot_probe_command(vmm: &str, runs: usize, extra: &str) -> String {
    format!(
        "\"$HUSK_RIG_DIR/{RIG_BOOT_PROBE}\" --vmm {vmm} --runs {runs} \
         --kernel \"$HUSK_RIG_DIR/{RIG_VMLINUX}\" --initrd \"$HUSK_RIG_DIR/{RIG_INITRAMFS}\" \
         --husk-vmm \"$HUSK_RIG_DIR/{RIG_HUSK_VMM}\" {extra}"
    )
}
