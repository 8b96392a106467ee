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
pub const ENV_HUSK_DAEMON: &str = "HUSK_DAEMON";
pub const ENV_CRI_E2E: &str = "HUSK_CRI_E2E";

/// Paths relative to `$HUSK_RIG_DIR` inside a rig run.
pub const RIG_VMLINUX: &str = "guest/vmlinux";
pub const RIG_INITRAMFS: &str = "guest/initramfs.cpio";
pub const RIG_BOOT_PROBE: &str = "bin/husk-boot-probe";
pub const RIG_HUSK_VMM: &str = "bin/husk-vmm";
pub const RIG_HUSK_DAEMON: &str = "bin/husk";
pub const RIG_CRI_E2E: &str = "bin/husk-cri-e2e";
pub const RIG_BUSYBOX: &str = "bin/busybox";
pub const RIG_REGISTRY: &str = "bin/docker-registry";
/// CA certificates: the rig's L1 host has no /etc/ssl, and the registry
/// client will not start without a trust store (even for plain HTTP).
pub const RIG_CA_CERTIFICATES: &str = "etc/ca-certificates.crt";
const CA_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Debian's registry (Go, linked against glibc only, which the rig's
/// system disk carries).
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// Built outputs of the workspace.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// Statically linked, so it runs in the rig's busybox L1 host.
    pub boot_probe: PathBuf,
    /// Our VMM, statically linked for the same reason.
    pub husk_vmm: PathBuf,
    /// The CRI daemon, static too.
    pub husk_daemon: PathBuf,
    /// The CRI end-to-end suite, benchmark and demo (static).
    pub cri_e2e: PathBuf,
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
            husk_daemon: get(ENV_HUSK_DAEMON)?,
            cri_e2e: get(ENV_CRI_E2E)?,
        })
    }

    /// The environment that [`Artifacts::from_env`] reads.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            (ENV_VMLINUX, self.vmlinux.clone()),
            (ENV_INITRAMFS, self.initramfs.clone()),
            (ENV_BOOT_PROBE, self.boot_probe.clone()),
            (ENV_HUSK_VMM, self.husk_vmm.clone()),
            (ENV_HUSK_DAEMON, self.husk_daemon.clone()),
            (ENV_CRI_E2E, self.cri_e2e.clone()),
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

    /// The payload of a CRI run: the daemon, the suite, busybox for the
    /// test images and the registry, with the guest image and VMM.
    pub fn cri_payload(&self) -> anyhow::Result<Payload> {
        crate::debian::ensure_installed(&["docker-registry", "ca-certificates"])?;
        Ok(self
            .payload()
            .file(&self.husk_daemon, RIG_HUSK_DAEMON)
            .file(&self.cri_e2e, RIG_CRI_E2E)
            .file(crate::busybox::host_binary()?, RIG_BUSYBOX)
            .file(REGISTRY_BINARY, RIG_REGISTRY)
            .file(CA_CERTIFICATES, RIG_CA_CERTIFICATES))
    }
}

/// The rig command line running `husk-cri-e2e <what>` (suite, demo,
/// bench ...) on the payload of [`Artifacts::cri_payload`].
pub fn cri_e2e_command(what: &str) -> String {
    format!(
        "SSL_CERT_FILE=\"$HUSK_RIG_DIR/{RIG_CA_CERTIFICATES}\" \"$HUSK_RIG_DIR/{RIG_CRI_E2E}\" --husk \"$HUSK_RIG_DIR/{RIG_HUSK_DAEMON}\" \
         --vmm \"$HUSK_RIG_DIR/{RIG_HUSK_VMM}\" --kernel \"$HUSK_RIG_DIR/{RIG_VMLINUX}\" \
         --initramfs \"$HUSK_RIG_DIR/{RIG_INITRAMFS}\" --busybox \"$HUSK_RIG_DIR/{RIG_BUSYBOX}\" \
         --registry \"$HUSK_RIG_DIR/{RIG_REGISTRY}\" {what}"
    )
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
