//! Thin system call wrappers the rest of the module shares.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::statvfs::{fstatvfs, FsFlags};

use super::options::RecursiveAttrs;

/// mount(2) with plain Rust types (nix's generic form needs a type for
/// every `None`).
pub(super) fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// Changes only the propagation of the mount at `target`.
pub(super) fn set_propagation(target: &Path, flags: MsFlags) -> nix::Result<()> {
    mount(None, target, None, flags, None)
}

/// Statvfs bits and the mount flags they report.
const STATVFS_TO_MOUNT: &[(FsFlags, MsFlags)] = &[
    (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
    (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
    (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
    (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
    (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
];

/// The per-mount flags of the mount `fd` is on. A bind remount must repeat
/// these: in a user namespace the kernel locks them and refuses (EPERM) a
/// remount that would drop one.
pub(super) fn mount_flags(fd: impl AsFd) -> nix::Result<MsFlags> {
    let have = fstatvfs(fd)?.flags();
    Ok(STATVFS_TO_MOUNT
        .iter()
        .filter(|(st, _)| have.contains(*st))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
}

/// mount_setattr(2) on the mount tree rooted at `fd` (Linux 5.12). Neither
/// nix nor libc wraps it.
pub(super) fn mount_setattr_recursive(fd: impl AsFd, attrs: RecursiveAttrs) -> nix::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: attrs.set,
        attr_clr: attrs.clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid fd, a NUL-terminated empty path (AT_EMPTY_PATH acts
    // on the fd itself) and a correctly sized, initialised mount_attr.
    let res = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(res).map(drop)
}
