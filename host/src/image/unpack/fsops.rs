//! The few `*at` system calls the unpacker needs, always relative to a
//! directory fd reached from the layer's root without following symlinks:
//! an entry `a -> /etc` followed by `a/passwd` must fail, not write the
//! host's /etc/passwd.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::c_int;

use super::path::LayerPath;

fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Why walking to an entry's parent failed.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("parent {0} is a symlink (never followed while unpacking)")]
    Symlink(String),
    #[error("parent {0} is not a directory")]
    NotDirectory(String),
    #[error("parent {0} does not exist")]
    Missing(String),
    #[error("cannot open parent {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Opens a directory `name` right under `dir`, refusing symlinks.
pub fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated; the returned fd is owned by us.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Walks `parents` from `root`, one component at a time with O_NOFOLLOW,
/// optionally creating missing folders (mode 0755, as tar and containerd
/// do for parents an archive does not list). Returns the last folder's fd.
pub fn walk(root: &OwnedFd, parents: &[CString], create: bool) -> Result<OwnedFd, WalkError> {
    let mut current = root.try_clone().map_err(|source| WalkError::Io {
        path: "/".into(),
        source,
    })?;
    let mut shown = String::new();
    for name in parents {
        shown.push('/');
        shown.push_str(&name.to_string_lossy());
        let next = match open_dir_at(current.as_raw_fd(), name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                match mkdir_at(current.as_raw_fd(), name, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(source) => {
                        return Err(WalkError::Io {
                            path: shown,
                            source,
                        })
                    }
                }
                let fd =
                    open_dir_at(current.as_raw_fd(), name).map_err(|source| WalkError::Io {
                        path: shown.clone(),
                        source,
                    })?;
                // mkdirat's mode is cut by the umask.
                fchmod(&fd, 0o755).map_err(|source| WalkError::Io {
                    path: shown.clone(),
                    source,
                })?;
                fd
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(WalkError::Missing(shown))
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(match lstat_at(current.as_raw_fd(), name) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                        WalkError::Symlink(shown)
                    }
                    _ => WalkError::NotDirectory(shown),
                });
            }
            Err(source) => {
                return Err(WalkError::Io {
                    path: shown,
                    source,
                })
            }
        };
        current = next;
    }
    Ok(current)
}

/// Walks to the parent of `path` (creating missing folders) and returns it
/// with the last name; `None` when `path` is the root.
pub fn parent_of<'p>(
    root: &OwnedFd,
    path: &'p LayerPath,
    create: bool,
) -> Result<Option<(OwnedFd, &'p CString)>, WalkError> {
    match path.split_last() {
        None => Ok(None),
        Some((parents, name)) => Ok(Some((walk(root, parents, create)?, name))),
    }
}

pub fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is written by fstatat before being read.
    cvt(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so `st` is initialized.
    Ok(unsafe { st.assume_init() })
}

/// `lstat_at`, with "does not exist" as `None`.
pub fn lstat_at_opt(dir: RawFd, name: &CStr) -> io::Result<Option<libc::stat>> {
    match lstat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn mkdir_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) }).map(drop)
}

/// Creates a new regular file for writing; fails if anything is there.
pub fn create_file_at(dir: RawFd, name: &CStr) -> io::Result<std::fs::File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: plain syscall on a NUL-terminated name.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

pub fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: plain syscall on NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) }).map(drop)
}

/// A hard link that does not follow a symlink target (linkat flags 0).
pub fn link_at(old_dir: RawFd, old: &CStr, new_dir: RawFd, new: &CStr) -> io::Result<()> {
    // SAFETY: plain syscall on NUL-terminated strings.
    cvt(unsafe { libc::linkat(old_dir, old.as_ptr(), new_dir, new.as_ptr(), 0) }).map(drop)
}

pub fn mknod_at(dir: RawFd, name: &CStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    cvt(unsafe { libc::mknodat(dir, name.as_ptr(), mode, dev) }).map(drop)
}

pub fn unlink_at(dir: RawFd, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall on a NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

/// Removes `name` under `dir` and, if it is a folder, everything in it,
/// never following symlinks (a later entry replacing an earlier one).
pub fn remove_all_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    let st = match lstat_at_opt(dir, name)? {
        None => return Ok(()),
        Some(st) => st,
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink_at(dir, name, false);
    }
    let sub = open_dir_at(dir, name)?;
    for child in list_dir(&sub)? {
        remove_all_at(sub.as_raw_fd(), &child)?;
    }
    unlink_at(dir, name, true)
}

/// The names in a folder, without `.` and `..`.
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // SAFETY: plain syscall on an open fd.
    let fd = cvt(unsafe { libc::dup(dir.as_raw_fd()) })?;
    // SAFETY: `fd` is a fresh dup that fdopendir takes over.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // SAFETY: `stream` is a valid DIR*. The dup shares the original's
    // offset, so start from the beginning.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is valid until closedir below.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent with a NUL-terminated name.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: closes the DIR* and its dup'ed fd.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

pub fn fchown(fd: &impl AsRawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub fn fchmod(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// lchown of `name` under `dir`.
pub fn lchown_at(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    cvt(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// chmod of `name` under `dir`; only for entries we just created and know
/// are not symlinks (Linux has no lchmod).
pub fn chmod_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a NUL-terminated name.
    cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), mode, 0) }).map(drop)
}

fn timespecs(secs: i64, nanos: i64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as _,
    };
    [t, t]
}

/// Sets atime and mtime of `name` under `dir` without following a symlink.
pub fn set_times_at(dir: RawFd, name: &CStr, secs: i64, nanos: i64) -> io::Result<()> {
    let ts = timespecs(secs, nanos);
    // SAFETY: `ts` holds two timespecs as utimensat expects.
    cvt(unsafe { libc::utimensat(dir, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

pub fn set_times(fd: &impl AsRawFd, secs: i64, nanos: i64) -> io::Result<()> {
    let ts = timespecs(secs, nanos);
    // SAFETY: `ts` holds two timespecs as futimens expects.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) }).map(drop)
}

pub fn set_xattr(fd: &impl AsRawFd, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for `value.len()` bytes.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}
