//! Bind mounts that put image layers and a container's host paths into a
//! pod's shared folder, the mounts found below them, and their removal.
//!
//! The host enforces a volume's read-only flag: the guest is not trusted
//! to. virtio-fs shows the guest one filesystem, so a host mount inside a
//! volume is invisible there as a mount; [`mounts_below`] lists them so
//! the guest can be given a bind of its own for each.

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
    /// The bind itself is read-only; mounts inside it keep their own flags
    /// (the CRI's `readonly` without `recursive_read_only`).
    ReadOnly,
    /// The bind and every mount inside it are read-only.
    RecursiveReadOnly,
    /// A CRI mount without `readonly`.
    ReadWrite,
}

/// A mount point as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    pub path: PathBuf,
    /// `ro` in the mount's own (per-mount) options.
    pub read_only: bool,
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
    // The read-only flag only takes effect on a remount, and a remount
    // changes one mount: the bind's top, or each mount below it too.
    let points = match access {
        Access::ReadWrite => Vec::new(),
        Access::ReadOnly => vec![target.to_owned()],
        Access::RecursiveReadOnly => {
            let mut points = vec![target.to_owned()];
            points.extend(mounts_below(target)?.into_iter().map(|m| m.path));
            points
        }
    };
    for point in &points {
        mount(
            None::<&str>,
            point,
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

/// The mounts strictly below `dir`, parents first.
pub fn mounts_below(dir: &Path) -> Result<Vec<MountPoint>, MountError> {
    let mut below: Vec<MountPoint> = mount_table()?
        .into_iter()
        .filter(|m| m.path != dir && m.path.starts_with(dir))
        .collect();
    below.sort_by_key(|m| m.path.components().count());
    // A path mounted over twice is one mount point; the last mount wins.
    let mut seen = std::collections::HashSet::new();
    below.reverse();
    below.retain(|m| seen.insert(m.path.clone()));
    below.reverse();
    Ok(below)
}

/// Detaches every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) -> Result<usize, MountError> {
    let mut points: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.path)
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
    Ok(mount_table()?.iter().any(|m| m.path == path))
}

fn mount_table() -> Result<Vec<MountPoint>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    Ok(parse_mountinfo(&text))
}

/// Mount points from mountinfo text: field 5 (octal escapes undone) and
/// whether field 6, the per-mount options, holds `ro`.
fn parse_mountinfo(text: &str) -> Vec<MountPoint> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ').skip(4);
            let path = PathBuf::from(unescape(fields.next()?));
            let read_only = fields.next()?.split(',').any(|o| o == "ro");
            Some(MountPoint { path, read_only })
        })
        .collect()
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

    #[test]
    fn mountinfo_lines_give_path_and_read_only() {
        let text = "22 1 0:21 / /sys rw,nosuid,nodev - sysfs sysfs rw\n\
                    40 22 0:35 / /a\\040b ro,relatime shared:3 - tmpfs none rw\n\
                    short line\n";
        assert_eq!(
            parse_mountinfo(text),
            [
                MountPoint {
                    path: "/sys".into(),
                    read_only: false
                },
                MountPoint {
                    path: "/a b".into(),
                    read_only: true
                },
            ]
        );
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

    /// Runs as root: a read-only bind leaves a tmpfs inside it writable
    /// and lists it; a recursively read-only one makes it read-only too.
    #[test]
    fn mounts_inside_a_bind_keep_or_lose_write_access() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("volume");
        let inner = source.join("tmpfs");
        std::fs::create_dir_all(&inner).unwrap();
        mount(
            Some("tmpfs"),
            &inner,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let shared = dir.path().join("shared");
        for (name, access, inner_writable) in [
            ("ro", Access::ReadOnly, true),
            ("rro", Access::RecursiveReadOnly, false),
        ] {
            let target = shared.join(name);
            bind(&source, &target, access).unwrap();
            let top = std::fs::write(target.join("f"), b"x").unwrap_err();
            assert_eq!(top.raw_os_error(), Some(libc::EROFS), "{name}");
            let below = std::fs::write(target.join("tmpfs/f"), b"x");
            assert_eq!(below.is_ok(), inner_writable, "{name}: {below:?}");
            assert_eq!(
                mounts_below(&target).unwrap(),
                [MountPoint {
                    path: target.join("tmpfs"),
                    read_only: !inner_writable
                }],
                "{name}"
            );
        }
        unmount_under(&shared).unwrap();
        umount2(&inner, MntFlags::MNT_DETACH).unwrap();
    }
}
