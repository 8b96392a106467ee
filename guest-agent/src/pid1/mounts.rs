//! The API filesystems. The kernel starts an initramfs init on a bare rootfs
//! with nothing mounted; containers and the agent itself need these.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One filesystem to mount.
struct ApiMount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In order: a mount point inside another (`/dev/pts`) comes after it.
const API_MOUNTS: &[ApiMount] = &[
    ApiMount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    ApiMount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    ApiMount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    ApiMount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    ApiMount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    ApiMount {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    ApiMount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    ApiMount {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// Why an API filesystem could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {target}: {source}")]
    CreateDir {
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
}

/// Mounts every API filesystem not mounted yet.
pub fn mount_all() -> Result<(), MountError> {
    API_MOUNTS.iter().try_for_each(ApiMount::ensure)
}

impl ApiMount {
    fn ensure(&self) -> Result<(), MountError> {
        let target = self.target;
        std::fs::create_dir_all(target)
            .map_err(|source| MountError::CreateDir { target, source })?;
        if is_mount_point(Path::new(target)) {
            return Ok(());
        }
        let data = (!self.data.is_empty()).then_some(self.data);
        match mount(
            Some(self.fstype),
            target,
            Some(self.fstype),
            self.flags,
            data,
        ) {
            // Someone (kernel automount, a previous agent) got there first.
            Ok(()) | Err(Errno::EBUSY) => Ok(()),
            Err(source) => Err(MountError::Mount {
                fstype: self.fstype,
                target,
                source,
            }),
        }
    }
}

/// A directory on another device than its parent is a mount point. (Misses
/// bind mounts of the same filesystem, which we never make here.)
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(own), Ok(parent)) = (path.metadata(), path.join("..").metadata()) else {
        return false;
    };
    own.dev() != parent.dev() || own.ino() == parent.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_mount_points() {
        assert!(is_mount_point(Path::new("/proc")));
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new(env!("CARGO_MANIFEST_DIR"))));
        assert!(!is_mount_point(Path::new("/no/such/dir")));
    }

    #[test]
    fn parents_come_before_nested_mounts() {
        for (i, m) in API_MOUNTS.iter().enumerate() {
            for earlier in &API_MOUNTS[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", earlier.target)),
                    "{} must come after {}",
                    m.target,
                    earlier.target
                );
            }
        }
    }
}
