//! Mounts the image layers as the container's root: an overlayfs with the
//! plan's writable upper layer on top.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use super::sys::{mount, mount_flags};
use super::{RootfsError, RootfsPlan};

/// How to pass the layers to the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum OverlayApi {
    /// fsopen/fsconfig with one `lowerdir+` per layer (Linux 6.8), falling
    /// back to [`OverlayApi::Legacy`] on older kernels.
    #[default]
    Auto,
    /// One mount(2) data string. Limited to a page and to paths without
    /// `:` `,` `\`, which is why it is only the fallback.
    #[cfg_attr(not(test), allow(dead_code))]
    Legacy,
}

/// The field the plan's errors name.
const FIELD: &str = "plan";

/// Mounts the root filesystem at `plan.rootfs`.
pub(super) fn mount_rootfs(plan: &RootfsPlan, api: OverlayApi) -> Result<(), RootfsError> {
    check_plan(plan)?;
    let sys = |action| RootfsError::sys(FIELD, action, &plan.rootfs);
    let upper = (!plan.upper.as_os_str().is_empty()).then_some((&*plan.upper, &*plan.work));
    if upper.is_none() && plan.lower.len() == 1 {
        // Overlayfs wants two lower layers when there is no upper one; a
        // read-only bind of the single layer is the same view.
        return bind_read_only(&plan.lower[0], &plan.rootfs)
            .map_err(sys("bind the only layer read-only on"));
    }
    // Overlayfs lists the top layer first; the plan lists the lowest first.
    let top_first: Vec<&Path> = plan.lower.iter().rev().map(PathBuf::as_path).collect();
    if api == OverlayApi::Auto {
        match mount_with_fsconfig(&top_first, upper, &plan.rootfs) {
            Err(Errno::ENOSYS) | Err(Errno::EINVAL) if !supports_lowerdir_plus() => {}
            result => return result.map_err(sys("mount overlay on")),
        }
    }
    let data = legacy_data(&top_first, upper)?;
    mount(
        Some(Path::new("overlay")),
        &plan.rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )
    .map_err(sys("mount overlay on"))
}

fn check_plan(plan: &RootfsPlan) -> Result<(), RootfsError> {
    let mut paths = vec![("plan.rootfs".to_string(), &plan.rootfs)];
    if !plan.upper.as_os_str().is_empty() {
        paths.push(("plan.upper".into(), &plan.upper));
        paths.push(("plan.work".into(), &plan.work));
    }
    if plan.lower.is_empty() {
        return Err(RootfsError::invalid(
            "plan.lower",
            "[]",
            "needs at least one layer",
        ));
    }
    for (i, lower) in plan.lower.iter().enumerate() {
        paths.push((format!("plan.lower[{i}]"), lower));
    }
    for (field, path) in paths {
        if !path.is_absolute() {
            return Err(RootfsError::invalid(
                field,
                path.display(),
                "must be absolute",
            ));
        }
    }
    Ok(())
}

fn bind_read_only(layer: &Path, target: &Path) -> nix::Result<()> {
    mount(Some(layer), target, None, MsFlags::MS_BIND, None)?;
    let top = open(target, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    let flags = mount_flags(&top)? | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(None, target, None, flags, None)
}

/// The mount(2) data for the legacy API.
fn legacy_data(top_first: &[&Path], upper: Option<(&Path, &Path)>) -> Result<String, RootfsError> {
    let mut fields: Vec<(String, &Path)> = top_first
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("plan.lower[{}]", top_first.len() - 1 - i), *p))
        .collect();
    if let Some((u, w)) = upper {
        fields.push(("plan.upper".into(), u));
        fields.push(("plan.work".into(), w));
    }
    for (field, path) in &fields {
        let bytes = path.as_os_str().as_bytes();
        if bytes.iter().any(|b| b":,\\\0".contains(b)) {
            return Err(RootfsError::invalid(
                field,
                path.display(),
                "overlay paths must not contain ':', ',', '\\' or NUL on this kernel",
            ));
        }
    }
    let lower: Vec<String> = top_first.iter().map(|p| p.display().to_string()).collect();
    let mut data = format!("lowerdir={}", lower.join(":"));
    if let Some((u, w)) = upper {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    // mount(2) copies at most one page of data.
    if data.len() >= 4096 {
        return Err(RootfsError::invalid(
            "plan.lower",
            format!("{} layers", top_first.len()),
            "overlay options exceed a page on a kernel without lowerdir+",
        ));
    }
    Ok(data)
}

/// Whether this kernel's overlayfs takes `lowerdir+` (6.8): asked of an
/// unused filesystem context, so an EINVAL from a real mount is not
/// mistaken for an old kernel.
fn supports_lowerdir_plus() -> bool {
    let Ok(fs) = fsopen("overlay") else {
        return false;
    };
    // Before 6.5 overlayfs sits behind the kernel's legacy adapter, which
    // accepts any key and only parses the options at create time (our
    // guest's 6.1 does that): a key no kernel knows tells them apart.
    if fsconfig_string(&fs, "husk-no-such-option", Path::new("x")) != Err(Errno::EINVAL) {
        return false;
    }
    // A path that cannot exist: a new kernel looks it up (ENOENT),
    // an older one rejects the key (EINVAL).
    fsconfig_string(&fs, "lowerdir+", Path::new("/\u{1}husk-probe\u{1}")) != Err(Errno::EINVAL)
}

fn mount_with_fsconfig(
    top_first: &[&Path],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> nix::Result<()> {
    let fs = fsopen("overlay")?;
    for layer in top_first {
        fsconfig_string(&fs, "lowerdir+", layer)?;
    }
    if let Some((u, w)) = upper {
        fsconfig_string(&fs, "upperdir", u)?;
        fsconfig_string(&fs, "workdir", w)?;
    }
    // SAFETY: a valid fs context fd; CMD_CREATE takes no key or value.
    let res = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    Errno::result(res)?;
    // SAFETY: a valid, created fs context fd.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) };
    // SAFETY: fsmount returned a new fd that nothing else owns.
    let mnt = unsafe { OwnedFd::from_raw_fd(Errno::result(mnt)? as i32) };
    let target = cstring(target)?;
    // SAFETY: a valid mount fd, NUL-terminated paths.
    let res = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(res).map(drop)
}

fn fsopen(fstype: &str) -> nix::Result<OwnedFd> {
    let fstype = CString::new(fstype).map_err(|_| Errno::EINVAL)?;
    // SAFETY: a NUL-terminated name and a valid flag.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
    // SAFETY: fsopen returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(Errno::result(fd)? as i32) })
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &Path) -> nix::Result<()> {
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    let value = cstring(value)?;
    // SAFETY: a valid fs context fd and NUL-terminated key and value.
    let res = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    Errno::result(res).map(drop)
}

fn cstring(path: &Path) -> nix::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_data_lists_the_top_layer_first() {
        let layers = [
            Path::new("/l/top"),
            Path::new("/l/mid"),
            Path::new("/l/base"),
        ];
        let data = legacy_data(&layers, Some((Path::new("/u"), Path::new("/w")))).unwrap();
        assert_eq!(
            data,
            "lowerdir=/l/top:/l/mid:/l/base,upperdir=/u,workdir=/w"
        );
        assert_eq!(legacy_data(&layers[..1], None).unwrap(), "lowerdir=/l/top");
    }

    #[test]
    fn legacy_data_refuses_separators_naming_the_layer() {
        let layers = [Path::new("/l/sha256:abc"), Path::new("/l/base")];
        let err = legacy_data(&layers, None).unwrap_err();
        assert!(err.is_invalid_argument());
        // The top layer is the last in the plan's (lowest first) order.
        assert!(err.to_string().starts_with("plan.lower[1]:"), "{err}");
        let long: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/{i:0>60}")))
            .collect();
        let long: Vec<&Path> = long.iter().map(PathBuf::as_path).collect();
        assert!(legacy_data(&long, None).is_err());
    }

    #[test]
    fn plan_paths_must_be_absolute() {
        let plan = |lower: Vec<PathBuf>| RootfsPlan {
            rootfs: "/r".into(),
            lower,
            upper: "/u".into(),
            work: "/w".into(),
            cgroup_dir: None,
            bind_roots: vec![],
        };
        assert!(check_plan(&plan(vec!["/a".into()])).is_ok());
        for (lower, field) in [
            (vec![], "plan.lower:"),
            (vec!["/a".into(), "b".into()], "plan.lower[1]:"),
        ] {
            let err = check_plan(&plan(lower)).unwrap_err();
            assert!(
                err.is_invalid_argument() && err.to_string().starts_with(field),
                "{err}"
            );
        }
    }
}
