//! The last changes, made inside the container's root: masked paths,
//! read-only paths, and a read-only "/".

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{fstat, makedev, Mode, SFlag};
use oci_spec::runtime::Spec;

use super::options::RecursiveAttrs;
use super::secure_path::{fd_path, open_in_root};
use super::sys::{mount, mount_flags, mount_setattr_recursive};
use super::RootfsError;

/// Applies `linux.maskedPaths`, `linux.readonlyPaths` and `root.readonly`.
pub(super) fn finalize(spec: &Spec) -> Result<(), RootfsError> {
    let root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(RootfsError::sys("root", "open", "/"))?;
    let at = Targets::new(&root);
    let linux = spec.linux().as_ref();
    let masked = linux.and_then(|l| l.masked_paths().as_ref());
    for (i, path) in masked.into_iter().flatten().enumerate() {
        at.mask(&format!("linux.maskedPaths[{i}]"), Path::new(path))?;
    }
    let readonly = linux.and_then(|l| l.readonly_paths().as_ref());
    for (i, path) in readonly.into_iter().flatten().enumerate() {
        at.read_only(&format!("linux.readonlyPaths[{i}]"), Path::new(path))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let flags = mount_flags(&root).map_err(RootfsError::sys(
            "root.readonly",
            "read mount flags of",
            "/",
        ))?;
        let flags = flags | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
        mount(None, Path::new("/"), None, flags, None).map_err(RootfsError::sys(
            "root.readonly",
            "remount read-only",
            "/",
        ))?;
    }
    Ok(())
}

/// Paths resolved inside the container's "/".
struct Targets<'a> {
    root: &'a OwnedFd,
    /// Whether /proc/thread-self works here; without a /proc mount the
    /// plain path is used (after pivot_root there is nothing outside "/"
    /// to escape to, and no container process runs yet).
    via_fd: bool,
}

impl<'a> Targets<'a> {
    fn new(root: &'a OwnedFd) -> Self {
        let via_fd = Path::new("/proc/thread-self/fd").is_dir();
        Self { root, via_fd }
    }

    /// Resolves `path`, refusing magic links; `None` if it does not exist.
    fn open(&self, field: &str, path: &Path) -> Result<Option<OwnedFd>, RootfsError> {
        match open_in_root(self.root, path) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(RootfsError::sys(field, "open", path)(e)),
        }
    }

    fn target(&self, fd: &OwnedFd, path: &Path) -> PathBuf {
        if self.via_fd {
            fd_path(fd)
        } else {
            path.to_path_buf()
        }
    }

    /// Hides `path`: a directory under an empty read-only tmpfs, anything
    /// else under /dev/null. A missing path needs no hiding.
    fn mask(&self, field: &str, path: &Path) -> Result<(), RootfsError> {
        let Some(fd) = self.open(field, path)? else {
            return Ok(());
        };
        let target = self.target(&fd, path);
        if is_kind(&fd, SFlag::S_IFDIR) {
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                flags,
                None,
            )
            .map_err(RootfsError::sys(field, "mask with a read-only tmpfs", path))
        } else {
            let null = self.dev_null(field)?;
            mount(
                Some(&self.target(&null, Path::new("/dev/null"))),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )
            .map_err(RootfsError::sys(field, "mask with /dev/null", path))
        }
    }

    /// The container's /dev/null, checked to be the real null device:
    /// anything else bound over a masked file could leak or mislead.
    fn dev_null(&self, field: &str) -> Result<OwnedFd, RootfsError> {
        let null = Path::new("/dev/null");
        let fd = open_in_root(self.root, null).map_err(RootfsError::sys(
            field,
            "open (to mask with)",
            null,
        ))?;
        let st = fstat(&fd).map_err(RootfsError::sys(field, "stat (to mask with)", null))?;
        if !is_kind(&fd, SFlag::S_IFCHR) || st.st_rdev != makedev(1, 3) {
            return Err(RootfsError::sys(field, "not the null device:", null)(
                Errno::ENODEV,
            ));
        }
        Ok(fd)
    }

    /// Makes `path` and everything mounted below it read-only, keeping the
    /// mount's other flags.
    fn read_only(&self, field: &str, path: &Path) -> Result<(), RootfsError> {
        let Some(fd) = self.open(field, path)? else {
            return Ok(());
        };
        let target = self.target(&fd, path);
        mount(
            Some(&target),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(RootfsError::sys(field, "bind onto itself", path))?;
        // The old fd names the covered directory; remount the new top.
        let top = open_in_root(self.root, path).map_err(RootfsError::sys(field, "reopen", path))?;
        let flags =
            mount_flags(&top).map_err(RootfsError::sys(field, "read mount flags of", path))?;
        let flags = flags | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
        mount(None, &self.target(&top, path), None, flags, None).map_err(RootfsError::sys(
            field,
            "remount read-only",
            path,
        ))?;
        // The remount reached only the top mount; mount_setattr (5.12)
        // reaches the ones below, e.g. binfmt_misc under /proc/sys.
        let attrs = RecursiveAttrs {
            set: libc::MOUNT_ATTR_RDONLY,
            clear: 0,
        };
        match mount_setattr_recursive(&top, attrs) {
            Ok(()) | Err(Errno::ENOSYS) => Ok(()),
            Err(e) => Err(RootfsError::sys(field, "make read-only below", path)(e)),
        }
    }
}

fn is_kind(fd: impl AsFd, kind: SFlag) -> bool {
    fstat(fd).is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind)
}
