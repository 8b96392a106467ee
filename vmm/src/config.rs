//! The VM description from the command line, checked before anything is
//! created so that every mistake is reported naming the flag and value.

use std::path::{Path, PathBuf};

use clap::Parser;

/// Smallest guest we agree to boot: kernel, initramfs and the agent need
/// about 24 MiB before the first container.
pub const MIN_MEMORY_MIB: u64 = 32;
pub const MAX_MEMORY_MIB: u64 = 256 << 10;
pub const MAX_VCPUS: u8 = 64;
/// Vsock CIDs 0-2 are reserved (hypervisor, local, host).
pub const MIN_GUEST_CID: u64 = 3;
/// The tag the agent looks for when it mounts the shared folder.
pub const SHARED_DIR_TAG: &str = "husk-shared";

/// husk-vmm: runs one microVM for one pod. Exits 0 when the guest powers
/// off or resets, 1 if the VM cannot be set up, 2 if it fails while running.
#[derive(Debug, Clone, Parser)]
#[command(name = "husk-vmm", version)]
pub struct VmConfig {
    /// Uncompressed ELF vmlinux to boot.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs (cpio) whose /init is husk-agent.
    #[arg(long, value_name = "PATH")]
    pub initrd: PathBuf,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "M")]
    pub memory_mib: u64,
    /// Unix socket for hybrid vsock: connect, write `CONNECT <port>\n`,
    /// read `OK <port>\n`. Guest connections to host port P go to `PATH_P`.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: PathBuf,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = MIN_GUEST_CID, value_name = "N")]
    pub cid: u64,
    /// Write the serial console here (appending) instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub console: Option<PathBuf>,
    /// Host directory shared read-write with the guest over virtio-fs
    /// (tag `husk-shared`).
    #[arg(long, value_name = "PATH")]
    pub shared_dir: Option<PathBuf>,
    /// Appended to the kernel command line.
    #[arg(long, value_name = "STR")]
    pub cmdline_extra: Option<String>,
    /// Log level for husk-vmm's own messages on stderr.
    #[arg(long, default_value = "warn", value_name = "LEVEL")]
    pub log_level: tracing::Level,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--kernel {0}: no such file")]
    KernelMissing(PathBuf),
    #[error("--initrd {0}: no such file")]
    InitrdMissing(PathBuf),
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u8),
    #[error("--memory-mib {0}: memory too small, the guest needs at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error("--memory-mib {0}: memory too large, at most {MAX_MEMORY_MIB} MiB")]
    MemoryTooLarge(u64),
    #[error("--cid {0}: guest CIDs start at {MIN_GUEST_CID} (0-2 are reserved)")]
    Cid(u64),
    #[error("--vsock-uds {0}: socket path taken (something already exists there)")]
    SocketTaken(PathBuf),
    #[error("--vsock-uds {0}: its directory does not exist")]
    SocketDirMissing(PathBuf),
    #[error("--shared-dir {0}: not a directory")]
    SharedDirNotDir(PathBuf),
    #[error("--console {0}: its directory does not exist")]
    ConsoleDirMissing(PathBuf),
}

impl VmConfig {
    /// Checks every field; the first problem wins.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.kernel.is_file() {
            return Err(Error::KernelMissing(self.kernel.clone()));
        }
        if !self.initrd.is_file() {
            return Err(Error::InitrdMissing(self.initrd.clone()));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::Vcpus(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(Error::MemoryTooLarge(self.memory_mib));
        }
        if self.cid < MIN_GUEST_CID || self.cid > u64::from(u32::MAX) {
            return Err(Error::Cid(self.cid));
        }
        // symlink_metadata: a dangling symlink is "taken" too.
        if self.vsock_uds.symlink_metadata().is_ok() {
            return Err(Error::SocketTaken(self.vsock_uds.clone()));
        }
        if !parent_exists(&self.vsock_uds) {
            return Err(Error::SocketDirMissing(self.vsock_uds.clone()));
        }
        if let Some(dir) = &self.shared_dir {
            if !dir.is_dir() {
                return Err(Error::SharedDirNotDir(dir.clone()));
            }
        }
        if let Some(console) = &self.console {
            if !parent_exists(console) {
                return Err(Error::ConsoleDirMissing(console.clone()));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

fn parent_exists(path: &Path) -> bool {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.is_dir(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd");
        std::fs::write(&kernel, b"x").unwrap();
        std::fs::write(&initrd, b"x").unwrap();
        VmConfig::parse_from([
            "husk-vmm",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--vsock-uds",
            dir.join("vsock.sock").to_str().unwrap(),
        ])
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("husk-vmm-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn defaults_are_valid() {
        let dir = temp_dir("ok");
        let c = config(&dir);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.vcpus, c.memory_mib, c.cid), (1, 256, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_bad_value_is_named() {
        let dir = temp_dir("bad");
        let good = config(&dir);
        let check = |f: &dyn Fn(&mut VmConfig), needle: &str| {
            let mut c = good.clone();
            f(&mut c);
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        };
        check(
            &|c| c.kernel = "/no/such/vmlinux".into(),
            "--kernel /no/such/vmlinux",
        );
        check(&|c| c.initrd = "/no/initrd".into(), "--initrd /no/initrd");
        check(&|c| c.vcpus = 0, "--vcpus 0");
        check(&|c| c.vcpus = 65, "--vcpus 65");
        check(&|c| c.memory_mib = 1, "memory too small");
        check(&|c| c.memory_mib = 1 << 30, "memory too large");
        check(&|c| c.cid = 2, "--cid 2");
        check(&|c| c.vsock_uds = c.kernel.clone(), "socket path taken");
        check(
            &|c| c.vsock_uds = "/no/such/dir/v.sock".into(),
            "does not exist",
        );
        check(
            &|c| c.shared_dir = Some(c.kernel.clone()),
            "not a directory",
        );
        check(
            &|c| c.console = Some("/no/such/dir/console".into()),
            "--console",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
