//! Mount propagation and the final switch into the new root.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};
use oci_spec::runtime::Spec;

use super::options;
use super::sys::{mount, set_propagation};
use super::RootfsError;
use crate::mountinfo;

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
    let mounts = mountinfo::read("/proc/thread-self/mountinfo")
        .map_err(|e| RootfsError::sys(FIELD, "read", "/proc/thread-self/mountinfo")(io_errno(e)))?;
    let mut points: Vec<PathBuf> = mounts
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
    mountinfo::read("/proc/thread-self/mountinfo").is_ok_and(|mounts| {
        mounts
            .iter()
            .any(|m| m.mount_point == Path::new("/") && m.fstype == "rootfs")
    })
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, SpecBuilder};

    use super::*;

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
