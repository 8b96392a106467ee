//! Read-only bind mounts that put image layers and a container's host
//! paths into a pod's shared folder, and their removal.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot bind-mount {source_path} at {target}: {errno}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("cannot prepare mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unmount {path}: {errno}")]
    Unmount { path: PathBuf, errno: nix::Error },
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

/// Whether the guest may write through a bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    /// A CRI mount without `readonly`.
    ReadWrite,
}

/// Bind-mounts `source` at `target` with `access` (creating the mount point
/// as a file or folder to match). Does nothing if `target` is already a
/// mount point (layers are shared by the pod's containers).
pub fn bind(source: &Path, target: &Path, access: Access) -> Result<(), MountError> {
    if is_mount_point(target)? {
        return Ok(());
    }
    let point_err = |source| MountError::MountPoint {
        path: target.to_owned(),
        source,
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(point_err)?;
    }
    if source.is_dir() {
        std::fs::create_dir_all(target).map_err(point_err)?;
    } else if !target.exists() {
        std::fs::File::create(target).map_err(point_err)?;
    }
    let bind_err = |errno| MountError::Bind {
        source_path: source.to_owned(),
        target: target.to_owned(),
        errno,
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(bind_err)?;
    // The read-only flag only takes effect on a remount of the bind.
    if access == Access::ReadOnly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|errno| {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            bind_err(errno)
        })?;
    }
    Ok(())
}

/// Detaches every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) -> Result<usize, MountError> {
    let mut points: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in &points {
        match umount2(point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(errno) => {
                return Err(MountError::Unmount {
                    path: point.clone(),
                    errno,
                })
            }
        }
    }
    Ok(points.len())
}

fn is_mount_point(path: &Path) -> Result<bool, MountError> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// Mount points from /proc/self/mountinfo (field 5, octal escapes undone).
fn mount_points() -> Result<Vec<PathBuf>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect())
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    /// Runs as root (like CI): a read-only bind refuses writes, and
    /// unmount_under removes nested mounts.
    #[test]
    fn read_only_binds_refuse_writes_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("layer");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("f"), b"x").unwrap();
        let shared = dir.path().join("shared");
        let target = shared.join("layers/k");
        bind(&source, &target, Access::ReadOnly).unwrap();
        bind(&source, &target, Access::ReadOnly).unwrap();
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"x");
        let err = std::fs::write(target.join("g"), b"y").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(unmount_under(&shared).unwrap(), 1);
        assert!(!target.join("f").exists());
        assert_eq!(unmount_under(&shared).unwrap(), 0);
    }
}
