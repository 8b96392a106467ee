//! Resolves container paths inside the rootfs, so that a symlink in an
//! image (`etc -> /`, `a -> ../../..`) can never point a mount, a device
//! node or a created directory at the agent's own filesystem.
//!
//! Hand-written on openat2(RESOLVE_IN_ROOT) rather than a crate (libpathrs,
//! cap-std): the kernel does the containment, which leaves only a short
//! "create what is missing" walk, and the agent keeps its dependency set
//! small.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlink, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Symlinks resolve as if the root fd were "/"; /proc magic links (which
/// jump anywhere) are refused.
const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// What to create as the last component when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaf {
    Dir,
    /// An empty regular file, e.g. to bind a file or a device node onto.
    File,
}

/// Opens `path` (as the container sees it) below `root` as an `O_PATH` fd.
pub(super) fn open_in_root(root: impl AsFd, path: &Path) -> nix::Result<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(RESOLVE);
    // EAGAIN: a mount or rename anywhere in the system raced a `..` in the
    // walk, and the kernel could not prove it stayed inside; retrying is
    // the documented answer.
    let mut tries = 0;
    loop {
        match openat2(&root, relative, how) {
            Err(Errno::EAGAIN) if tries < MAX_RETRIES => tries += 1,
            result => return result,
        }
    }
}

/// Retries of an openat2 that raced (EAGAIN) before giving up.
const MAX_RETRIES: usize = 128;

/// Like [`open_in_root`], creating missing directories on the way and the
/// last component as `leaf`.
///
/// Each missing component is created with mkdirat/openat relative to the
/// fd of its parent, and that parent was itself found with
/// RESOLVE_IN_ROOT, so creation happens inside `root` whatever the image's
/// symlinks say. A dangling symlink on the way (an image's
/// `/etc/resolv.conf -> ../run/...`) has its target created, inside
/// `root`, as runc does.
pub(super) fn create_in_root(root: &OwnedFd, path: &Path, leaf: Leaf) -> nix::Result<OwnedFd> {
    create_at_depth(root, path, leaf, 0)
}

/// Symlinks followed while creating one path, as the kernel's own limit.
const MAX_LINKS: usize = 40;

fn create_at_depth(root: &OwnedFd, path: &Path, leaf: Leaf, links: usize) -> nix::Result<OwnedFd> {
    match open_in_root(root, path) {
        Err(Errno::ENOENT) => {}
        found => return found,
    }
    let names = normal_components(path)?;
    let mut parent = nix::unistd::dup(root)?;
    let mut prefix = PathBuf::new();
    for (i, name) in names.iter().enumerate() {
        prefix.push(name);
        match open_in_root(root, &prefix) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let this_leaf = if i + 1 == names.len() {
            leaf
        } else {
            Leaf::Dir
        };
        let made = match this_leaf {
            Leaf::File => {
                let flags = OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                openat(&parent, *name, flags, Mode::from_bits_truncate(0o644)).map(drop)
            }
            Leaf::Dir => mkdirat(&parent, *name, Mode::from_bits_truncate(0o755)),
        };
        match made {
            Ok(()) => {}
            // A dangling symlink (or a racing creator): create its target.
            Err(Errno::EEXIST) => {
                if links >= MAX_LINKS {
                    return Err(Errno::ELOOP);
                }
                if let Some(target) = dangling_target(root, &parent, name)? {
                    create_at_depth(root, &target, this_leaf, links + 1)?;
                }
            }
            Err(e) => return Err(e),
        }
        parent = open_in_root(root, &prefix)?;
    }
    Ok(parent)
}

/// Where the symlink `name` in `parent` points, as a path inside `root`;
/// `None` if it is not a symlink. A relative target is taken from the
/// parent's real location (read back from /proc), so `..` in it is plain
/// arithmetic on a path without symlinks, clamped at the root.
fn dangling_target(root: &OwnedFd, parent: &OwnedFd, name: &OsStr) -> nix::Result<Option<PathBuf>> {
    let target = match readlinkat(parent, name) {
        Ok(t) => PathBuf::from(t),
        Err(Errno::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out: Vec<OsString> = Vec::new();
    if target.is_relative() {
        let root_real = PathBuf::from(readlink(&fd_path(root))?);
        let parent_real = PathBuf::from(readlink(&fd_path(parent))?);
        let inside = parent_real
            .strip_prefix(&root_real)
            .map_err(|_| Errno::EXDEV)?;
        out.extend(
            normal_components(inside)?
                .into_iter()
                .map(OsStr::to_os_string),
        );
    }
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(Some(out.iter().collect::<PathBuf>()))
}

/// The names in `path`; `..` is refused (validation already did) so the
/// walk never has to reason about it.
fn normal_components(path: &Path) -> nix::Result<Vec<&OsStr>> {
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => names.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(Errno::EINVAL),
        }
    }
    Ok(names)
}

/// A path naming exactly what `fd` is, for system calls that take a path
/// (mount(2)). `thread-self`, not `self`: the tests run this in a thread
/// that alone unshared its mount namespace.
pub(super) fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/thread-self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use nix::fcntl::open;

    use super::*;
    use crate::engine::rootfs::tests::TempDir;

    /// A fake rootfs with escaping symlinks, plus a unique name that must
    /// never appear on the host.
    fn fake_root() -> (TempDir, PathBuf, OwnedFd, String) {
        let tmp = TempDir::new("secure-path");
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(rootfs.join("real")).unwrap();
        symlink("/", rootfs.join("etc")).unwrap();
        symlink("../../..", rootfs.join("real/up")).unwrap();
        symlink("/real/up/../../../..", rootfs.join("abs-up")).unwrap();
        let root = open(
            &rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let probe = format!("husk-escape-probe-{}", std::process::id());
        (tmp, rootfs, root, probe)
    }

    fn host_has(probe: &str) -> bool {
        ["/", "/tmp"]
            .iter()
            .any(|d| Path::new(d).join(probe).exists())
    }

    #[test]
    fn absolute_symlink_to_slash_stays_inside() {
        let (_tmp, rootfs, root, probe) = fake_root();
        let target = format!("/etc/{probe}/sub");
        create_in_root(&root, Path::new(&target), Leaf::Dir).unwrap();
        assert!(rootfs.join(&probe).join("sub").is_dir());
        assert!(!host_has(&probe), "created on the host");
    }

    #[test]
    fn dotdot_symlinks_stay_inside() {
        let (tmp, rootfs, root, probe) = fake_root();
        create_in_root(&root, Path::new(&format!("/real/up/{probe}")), Leaf::File).unwrap();
        assert!(rootfs.join(&probe).is_file());
        create_in_root(&root, Path::new(&format!("/abs-up/{probe}-2")), Leaf::Dir).unwrap();
        assert!(rootfs.join(format!("{probe}-2")).is_dir());
        assert!(!host_has(&probe) && !tmp.path().join(&probe).exists());
        assert!(!host_has(&format!("{probe}-2")));
    }

    #[test]
    fn dangling_symlinks_get_their_target_created_inside() {
        let (tmp, rootfs, root, probe) = fake_root();
        // Like an image's /etc/resolv.conf, through a directory symlink.
        fs::create_dir_all(rootfs.join("private/etc")).unwrap();
        fs::remove_file(rootfs.join("etc")).unwrap();
        symlink("private/etc", rootfs.join("etc")).unwrap();
        symlink(
            "../../run/resolve/stub.conf",
            rootfs.join("private/etc/resolv.conf"),
        )
        .unwrap();
        create_in_root(&root, Path::new("/etc/resolv.conf"), Leaf::File).unwrap();
        assert!(rootfs.join("run/resolve/stub.conf").is_file());
        // Absolute, and escaping with `..`: both land inside.
        symlink(format!("/{probe}/a"), rootfs.join("abs")).unwrap();
        create_in_root(&root, Path::new("/abs/b"), Leaf::Dir).unwrap();
        assert!(rootfs.join(&probe).join("a/b").is_dir());
        let up = format!("../../../../../../{probe}-up");
        symlink(&up, rootfs.join("real/rel")).unwrap();
        create_in_root(&root, Path::new("/real/rel"), Leaf::Dir).unwrap();
        assert!(rootfs.join(format!("{probe}-up")).is_dir());
        assert!(!host_has(&probe) && !host_has(&format!("{probe}-up")));
        assert!(!tmp.path().join(format!("{probe}-up")).exists());
        // A loop ends.
        symlink("loop2", rootfs.join("loop1")).unwrap();
        symlink("loop1", rootfs.join("loop2")).unwrap();
        assert!(create_in_root(&root, Path::new("/loop1/x"), Leaf::Dir).is_err());
    }

    #[test]
    fn opening_resolves_inside_and_refuses_magic_links() {
        let (_tmp, rootfs, root, _) = fake_root();
        fs::write(rootfs.join("passwd"), b"inside").unwrap();
        let fd = open_in_root(&root, Path::new("/etc/passwd")).unwrap();
        let via = fs::read_link(fd_path(&fd)).unwrap();
        assert_eq!(via, rootfs.join("passwd"));
        // /etc/hostname exists on the host but not in the fake root.
        assert_eq!(
            open_in_root(&root, Path::new("/etc/hostname")).unwrap_err(),
            Errno::ENOENT
        );
        assert!(open_in_root(&root, Path::new("/")).is_ok());
        // `root` in /proc/self is a magic link to the host's "/".
        let proc_self = open(
            "/proc/self",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            open_in_root(&proc_self, Path::new("/root/etc")).unwrap_err(),
            Errno::ELOOP
        );
    }

    #[test]
    fn existing_paths_are_reused() {
        let (_tmp, rootfs, root, _) = fake_root();
        fs::write(rootfs.join("real/file"), b"x").unwrap();
        create_in_root(&root, Path::new("/real/file"), Leaf::File).unwrap();
        assert_eq!(fs::read(rootfs.join("real/file")).unwrap(), b"x");
        assert_eq!(
            create_in_root(&root, Path::new("/real/../x"), Leaf::Dir).unwrap_err(),
            Errno::EINVAL
        );
    }
}
