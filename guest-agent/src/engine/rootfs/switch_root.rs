//! Mount propagation and the final switch into the new root.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};
use oci_spec::runtime::Spec;

use super::options;
use super::sys::{mount, set_propagation};
use super::RootfsError;

/// How to make the rootfs "/".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum SwitchRoot {
    /// pivot_root, or [`SwitchRoot::MoveRoot`] when the agent's root is
    /// the initramfs, which pivot_root refuses (EINVAL).
    #[default]
    Auto,
    /// MS_MOVE the rootfs over "/" and chroot into it, as runc's
    /// `--no-pivot`.
    #[cfg_attr(not(test), allow(dead_code))]
    MoveRoot,
}

const FIELD: &str = "root";

/// `linux.rootfsPropagation` as mount flags, `None` when unset.
pub(super) fn root_propagation(spec: &Spec) -> Result<Option<MsFlags>, RootfsError> {
    let value = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref());
    match value {
        None | Some("") => Ok(None),
        Some(name) => options::propagation(name).map(Some).ok_or_else(|| {
            RootfsError::invalid("linux.rootfsPropagation", name, "unknown propagation")
        }),
    }
}

/// First thing in the new mount namespace: set the propagation of "/"
/// (`flags`) so nothing mounted from here on reaches the agent's
/// namespace, and make the mount holding `rootfs` private, which
/// pivot_root requires even when "/" was asked to be shared.
pub(super) fn prepare(flags: MsFlags, rootfs: &Path) -> Result<(), RootfsError> {
    set_propagation(Path::new("/"), flags).map_err(RootfsError::sys(
        "linux.rootfsPropagation",
        "set propagation of",
        "/",
    ))?;
    // The nearest ancestor that is a mount point; EINVAL means "not one".
    for dir in rootfs.ancestors().skip(1) {
        match set_propagation(dir, MsFlags::MS_PRIVATE) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) => continue,
            Err(e) => return Err(RootfsError::sys(FIELD, "make private", dir)(e)),
        }
    }
    Ok(())
}

/// Makes `rootfs` the process's "/" and its working directory.
pub(super) fn switch(rootfs: &Path, how: SwitchRoot) -> Result<(), RootfsError> {
    chdir(rootfs).map_err(RootfsError::sys(FIELD, "chdir", rootfs))?;
    if how == SwitchRoot::Auto {
        // pivot_root(".", ".") stacks the old root on the new one, where
        // it is detached without needing a directory for it.
        match pivot_root(".", ".") {
            Ok(()) => {
                // Slave first, so the detach does not propagate anywhere.
                let dot = Path::new(".");
                set_propagation(dot, MsFlags::MS_SLAVE | MsFlags::MS_REC).map_err(
                    RootfsError::sys(FIELD, "make the old root a slave at", rootfs),
                )?;
                umount2(dot, MntFlags::MNT_DETACH).map_err(RootfsError::sys(
                    FIELD,
                    "detach the old root from",
                    rootfs,
                ))?;
                return chdir("/").map_err(RootfsError::sys(FIELD, "chdir", "/"));
            }
            Err(Errno::EINVAL) if root_is_initramfs() => {}
            Err(e) => return Err(RootfsError::sys(FIELD, "pivot_root into", rootfs)(e)),
        }
    }
    move_root(rootfs)
}

/// The initramfs cannot be pivoted away from, so move the rootfs over it
/// and chroot. Mounts outside the rootfs are detached first so they are
/// not left reachable in the namespace; the initramfs itself stays, under
/// the rootfs, where path walks cannot reach it (".." from the top of a
/// mount stacked on "/" comes back to that mount).
fn move_root(rootfs: &Path) -> Result<(), RootfsError> {
    let text = std::fs::read("/proc/thread-self/mountinfo")
        .map_err(|e| RootfsError::sys(FIELD, "read", "/proc/thread-self/mountinfo")(io_errno(e)))?;
    let mut points: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| !rootfs.starts_with(p) && !p.starts_with(rootfs))
        .collect();
    // Deepest first, so a parent's detach does not leave a child unnamed.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        match umount2(&point, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(RootfsError::sys(FIELD, "detach agent mount", point)(e)),
        }
    }
    chdir(rootfs).map_err(RootfsError::sys(FIELD, "chdir", rootfs))?;
    mount(
        Some(Path::new(".")),
        Path::new("/"),
        None,
        MsFlags::MS_MOVE,
        None,
    )
    .map_err(RootfsError::sys(FIELD, "move over / the rootfs", rootfs))?;
    chroot(".").map_err(RootfsError::sys(FIELD, "chroot into", rootfs))?;
    chdir("/").map_err(RootfsError::sys(FIELD, "chdir", "/"))
}

fn root_is_initramfs() -> bool {
    std::fs::read("/proc/thread-self/mountinfo").is_ok_and(|text| {
        parse_mountinfo(&text)
            .iter()
            .any(|m| m.mount_point == Path::new("/") && m.fstype == "rootfs")
    })
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The two mountinfo fields this module needs.
#[derive(Debug, PartialEq, Eq)]
struct MountInfo {
    mount_point: PathBuf,
    fstype: String,
}

/// Parses /proc/*/mountinfo: field 5 is the mount point, the field after
/// the lone `-` the filesystem type. Hand-written: two fields do not
/// justify a crate.
fn parse_mountinfo(text: &[u8]) -> Vec<MountInfo> {
    let text = String::from_utf8_lossy(text);
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(dash + 1)?.to_string(),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escaping of space, tab, newline and `\`.
fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, SpecBuilder};

    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let text = b"22 1 0:20 / / rw - rootfs rootfs rw\n\
            36 22 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext4 /dev/root rw\n\
            37 22 0:5 / /a\\134b rw - tmpfs tmpfs rw\n";
        let got = parse_mountinfo(text);
        assert_eq!(
            got,
            vec![
                MountInfo {
                    mount_point: "/".into(),
                    fstype: "rootfs".into()
                },
                MountInfo {
                    mount_point: "/mnt two".into(),
                    fstype: "ext4".into()
                },
                MountInfo {
                    mount_point: "/a\\b".into(),
                    fstype: "tmpfs".into()
                },
            ]
        );
    }

    #[test]
    fn root_propagation_defaults_to_none_and_maps_names() {
        let spec = |p: Option<&str>| {
            let mut linux = LinuxBuilder::default();
            if let Some(p) = p {
                linux = linux.rootfs_propagation(p);
            }
            SpecBuilder::default()
                .linux(linux.build().unwrap())
                .build()
                .unwrap()
        };
        assert_eq!(root_propagation(&spec(None)).unwrap(), None);
        assert_eq!(root_propagation(&spec(Some(""))).unwrap(), None);
        assert_eq!(
            root_propagation(&spec(Some("rslave"))).unwrap(),
            Some(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(
            root_propagation(&spec(Some("shared"))).unwrap(),
            Some(MsFlags::MS_SHARED)
        );
        assert!(root_propagation(&spec(Some("bogus")))
            .unwrap_err()
            .is_invalid_argument());
    }
}
