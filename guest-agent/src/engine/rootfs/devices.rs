//! The container's /dev: the standard nodes and links every container
//! expects, then the spec's `linux.devices`.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{
    fchmodat, fstat, fstatat, makedev, mknodat, FchmodatFlags, FileStat, Mode, SFlag,
};
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Spec};

use super::options;
use super::secure_path::{create_in_root, fd_path, open_in_root, Leaf};
use super::sys::mount;
use super::RootfsError;

/// Nodes every container gets, bound from the agent's /dev: a bind needs
/// no mknod permission, so it also works in a user namespace.
const DEFAULT_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Links every container gets (link, target).
const DEFAULT_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The field errors about the default /dev content name.
const DEFAULT_FIELD: &str = "default /dev";

/// Whether to fill /dev: not when the spec binds something over /dev,
/// which then is the caller's /dev (as in runc).
pub(super) fn wants_default_dev(spec: &Spec) -> bool {
    !spec.mounts().iter().flatten().any(|m| {
        let list = m.options().as_deref().unwrap_or_default();
        m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind") || options::parse(list).is_ok_and(|o| o.bind))
    })
}

/// Creates the default nodes, links and /dev/shm under `root`.
pub(super) fn default_dev(root: &OwnedFd) -> Result<(), RootfsError> {
    let dev = create_in_root(root, Path::new("/dev"), Leaf::Dir).map_err(RootfsError::sys(
        DEFAULT_FIELD,
        "create",
        "/dev",
    ))?;
    for name in DEFAULT_NODES {
        let host = Path::new("/dev").join(name);
        bind_host_node(root, DEFAULT_FIELD, &host, &host, None)?;
    }
    for (name, target) in DEFAULT_LINKS {
        match symlinkat(*target, &dev, *name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(RootfsError::sys(
                    DEFAULT_FIELD,
                    "symlink",
                    Path::new("/dev").join(name),
                )(e))
            }
        }
    }
    // /dev/ptmx must lead to the container's devpts instance; an image's
    // own ptmx node would reach the agent's ptys instead.
    let ptmx_err = RootfsError::sys(
        DEFAULT_FIELD,
        "replace with a link to pts/ptmx",
        "/dev/ptmx",
    );
    match unlinkat(&dev, "ptmx", UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(ptmx_err(e)),
    }
    symlinkat("pts/ptmx", &dev, "ptmx").map_err(ptmx_err)?;
    if matches!(
        open_in_root(root, Path::new("/dev/shm")),
        Err(Errno::ENOENT)
    ) {
        let shm = create_in_root(root, Path::new("/dev/shm"), Leaf::Dir)
            .map_err(RootfsError::sys(DEFAULT_FIELD, "create", "/dev/shm"))?;
        chmod(&shm, 0o1777).map_err(RootfsError::sys(DEFAULT_FIELD, "chmod", "/dev/shm"))?;
    }
    Ok(())
}

/// Creates `linux.devices` with mknod, falling back to binding the
/// agent's node of the same path where mknod is not permitted (a user
/// namespace).
pub(super) fn create_devices(root: &OwnedFd, spec: &Spec) -> Result<(), RootfsError> {
    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for (i, device) in devices.into_iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        match make_node(root, &field, device) {
            Err(RootfsError::Sys {
                source: Errno::EPERM,
                ..
            }) => {
                let wanted = Some((kind(device.typ()), rdev(device)));
                bind_host_node(root, &field, device.path(), device.path(), wanted)?;
            }
            other => other?,
        }
    }
    Ok(())
}

fn kind(typ: LinuxDeviceType) -> SFlag {
    match typ {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        // Validation refuses `a`.
        LinuxDeviceType::C | LinuxDeviceType::U | LinuxDeviceType::A => SFlag::S_IFCHR,
    }
}

fn rdev(device: &LinuxDevice) -> u64 {
    if device.typ() == LinuxDeviceType::P {
        return 0;
    }
    makedev(device.major() as u64, device.minor() as u64)
}

fn make_node(root: &OwnedFd, field: &str, device: &LinuxDevice) -> Result<(), RootfsError> {
    let path = device.path();
    let err = |action| RootfsError::sys(field, action, path);
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RootfsError::invalid(
            format!("{field}.path"),
            path.display(),
            "no file name",
        ));
    };
    let parent = create_in_root(root, parent_path, Leaf::Dir).map_err(err("create parent of"))?;
    let (kind, rdev) = (kind(device.typ()), rdev(device));
    let perm = Mode::from_bits_truncate(device.file_mode().unwrap_or(0o666) & 0o7777);
    match mknodat(&parent, name, kind, perm, rdev) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let st = fstatat(&parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(err("stat existing"))?;
            if is_node(&st, kind, rdev) {
                // Already there, e.g. a default node; leave it (and never
                // chmod it: it may be a bind of the agent's own node).
                return Ok(());
            }
            unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir).map_err(err("replace existing"))?;
            mknodat(&parent, name, kind, perm, rdev).map_err(err("mknod"))?;
        }
        Err(e) => return Err(err("mknod")(e)),
    }
    // mknod applied the umask; set the exact mode, then the owner.
    fchmodat(&parent, name, perm, FchmodatFlags::FollowSymlink).map_err(err("chmod"))?;
    let uid = device.uid().map(Uid::from_raw).unwrap_or(Uid::from_raw(0));
    let gid = device.gid().map(Gid::from_raw).unwrap_or(Gid::from_raw(0));
    fchownat(
        &parent,
        name,
        Some(uid),
        Some(gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(err("chown"))
}

fn is_node(st: &FileStat, kind: SFlag, rdev: u64) -> bool {
    let same_kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind;
    same_kind && (kind == SFlag::S_IFIFO || st.st_rdev == rdev)
}

/// Binds the agent's node `host` onto an empty file at `path` in the
/// container. Checks `host` is a device (of the wanted kind and number,
/// when given) so a misconfigured agent /dev is not exposed as one.
fn bind_host_node(
    root: &OwnedFd,
    field: &str,
    host: &Path,
    path: &Path,
    wanted: Option<(SFlag, u64)>,
) -> Result<(), RootfsError> {
    let src = open(host, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(RootfsError::sys(field, "open the agent's node", host))?;
    let st = fstat(&src).map_err(RootfsError::sys(field, "stat the agent's node", host))?;
    let ok = match wanted {
        Some((kind, rdev)) => is_node(&st, kind, rdev),
        None => is_node(&st, SFlag::S_IFCHR, st.st_rdev),
    };
    if !ok {
        return Err(RootfsError::sys(
            field,
            "not the expected device node:",
            host,
        )(Errno::ENODEV));
    }
    let dst =
        create_in_root(root, path, Leaf::File).map_err(RootfsError::sys(field, "create", path))?;
    mount(
        Some(&fd_path(&src)),
        &fd_path(&dst),
        None,
        MsFlags::MS_BIND,
        None,
    )
    .map_err(RootfsError::sys(
        field,
        "bind the agent's node onto",
        PathBuf::from(path),
    ))
}

fn chmod(fd: &OwnedFd, mode: u32) -> nix::Result<()> {
    // fchmod does not take O_PATH fds; the /proc path of one works.
    fchmodat(
        nix::fcntl::AT_FDCWD,
        &fd_path(fd),
        Mode::from_bits_truncate(mode),
        FchmodatFlags::FollowSymlink,
    )
}
