//! ReadFile and WriteFile: whole-file access to the guest's shared folder
//! (the host folder husk-vmm exports over virtio-fs), and nowhere else.
//!
//! The host names a file by its absolute guest path. Containment is checked
//! twice: lexically (absolute, no `..`, under the root) and after
//! resolution (the canonical parent folder must lie under the canonical
//! root, and the last component is opened with `O_NOFOLLOW`), so neither a
//! symlinked folder nor a symlinked file leads out of the share. A folder
//! swapped for a symlink between the check and the open could still escape;
//! closing that needs `openat2(RESOLVE_BENEATH)`, a later step.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use husk_proto::{MAX_FILE_BYTES, MAX_PATH_BYTES};
use tonic::Status;

/// Mode of a written file when the host sends 0.
const DEFAULT_MODE: u32 = 0o644;

/// Why a file request was refused; each names the path it is about.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path:?}: path is not absolute")]
    Relative { path: String },
    #[error("path of {len} bytes is longer than {MAX_PATH_BYTES}")]
    PathTooLong { len: usize },
    #[error("{path:?}: `..` components are not allowed")]
    DotDot { path: String },
    #[error("{path:?} is not a file under the shared folder {}", root.display())]
    OutsideRoot { path: String, root: PathBuf },
    #[error("{path:?} resolves outside the shared folder {} through a symlink", root.display())]
    Escapes { path: String, root: PathBuf },
    #[error("{path:?} is a symlink; only regular files can be read or written")]
    Symlink { path: String },
    #[error("{path:?} is not a regular file")]
    NotRegular { path: String },
    #[error("{path:?} does not exist (or its folder does not)")]
    NotFound { path: String },
    #[error("{path:?}: permission denied")]
    Denied { path: String },
    #[error("max_bytes {asked} is above the limit of {MAX_FILE_BYTES}")]
    BoundTooHigh { asked: u32 },
    #[error("{path:?} holds {len} bytes, more than max_bytes {max}")]
    FileTooLarge { path: String, len: u64, max: usize },
    #[error("{path:?}: {len} bytes of data is above the limit of {MAX_FILE_BYTES}")]
    DataTooLarge { path: String, len: usize },
    #[error("shared folder {} is not available: {source}", root.display())]
    NoRoot {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl From<FileError> for Status {
    fn from(e: FileError) -> Status {
        let message = e.to_string();
        match e {
            FileError::Relative { .. }
            | FileError::PathTooLong { .. }
            | FileError::DotDot { .. }
            | FileError::OutsideRoot { .. }
            | FileError::NotRegular { .. }
            | FileError::BoundTooHigh { .. }
            | FileError::DataTooLarge { .. } => Status::invalid_argument(message),
            FileError::Escapes { .. } | FileError::Symlink { .. } | FileError::Denied { .. } => {
                Status::permission_denied(message)
            }
            FileError::NotFound { .. } => Status::not_found(message),
            FileError::FileTooLarge { .. } => Status::out_of_range(message),
            FileError::NoRoot { .. } => Status::failed_precondition(message),
            FileError::Io { .. } => Status::internal(message),
        }
    }
}

/// The shared folder, the only place file requests may touch.
#[derive(Debug, Clone)]
pub struct SharedFolder {
    root: PathBuf,
}

impl SharedFolder {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The whole content of regular file `path`, if it holds at most
    /// `max_bytes` (0: [`MAX_FILE_BYTES`]).
    pub fn read(&self, path: &str, max_bytes: u32) -> Result<Vec<u8>, FileError> {
        let max = match max_bytes {
            0 => MAX_FILE_BYTES,
            n if n as usize > MAX_FILE_BYTES => {
                return Err(FileError::BoundTooHigh { asked: n });
            }
            n => n as usize,
        };
        let target = self.resolve(path)?;
        let file = open(&target, path, OpenOptions::new().read(true))?;
        let len = regular_len(&file, path)?;
        if len > max as u64 {
            return Err(FileError::FileTooLarge {
                path: path.into(),
                len,
                max,
            });
        }
        // Read one byte past the bound: the file may grow after fstat.
        let mut data = Vec::with_capacity(len as usize);
        file.take(max as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|e| io_error(path, e))?;
        if data.len() > max {
            return Err(FileError::FileTooLarge {
                path: path.into(),
                len: data.len() as u64,
                max,
            });
        }
        Ok(data)
    }

    /// Creates or replaces regular file `path` with `data`, mode `mode & 0o777`
    /// (0: 0o644).
    pub fn write(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FileError> {
        if data.len() > MAX_FILE_BYTES {
            return Err(FileError::DataTooLarge {
                path: path.into(),
                len: data.len(),
            });
        }
        let mode = match mode & 0o777 {
            0 => DEFAULT_MODE,
            m => m,
        };
        let target = self.resolve(path)?;
        // No O_TRUNC: truncate only once fstat says it is a regular file.
        let mut file = open(
            &target,
            path,
            OpenOptions::new().write(true).create(true).mode(mode),
        )?;
        regular_len(&file, path)?;
        file.set_len(0).map_err(|e| io_error(path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(path, e))?;
        file.write_all(data).map_err(|e| io_error(path, e))?;
        file.sync_all().map_err(|e| io_error(path, e))?;
        Ok(())
    }

    /// Checks `path` and returns it rebuilt on the canonical parent folder.
    fn resolve(&self, path: &str) -> Result<PathBuf, FileError> {
        if path.len() > MAX_PATH_BYTES {
            return Err(FileError::PathTooLong { len: path.len() });
        }
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(FileError::Relative { path: path.into() });
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(FileError::DotDot { path: path.into() });
        }
        let outside = || FileError::OutsideRoot {
            path: path.into(),
            root: self.root.clone(),
        };
        let relative = p.strip_prefix(&self.root).map_err(|_| outside())?;
        let name = match (relative.parent(), relative.file_name()) {
            (Some(_), Some(name)) => name.to_owned(),
            _ => return Err(outside()), // the root itself
        };
        let root = self
            .root
            .canonicalize()
            .map_err(|source| FileError::NoRoot {
                root: self.root.clone(),
                source,
            })?;
        let parent = p.parent().ok_or_else(outside)?;
        let parent = parent.canonicalize().map_err(|e| classify(path, e))?;
        if !parent.starts_with(&root) {
            return Err(FileError::Escapes {
                path: path.into(),
                root: self.root.clone(),
            });
        }
        Ok(parent.join(name))
    }
}

/// Opens `target` without following a symlink in its last component and
/// without blocking on a FIFO (whose open would wait for a peer).
fn open(target: &Path, path: &str, options: &mut OpenOptions) -> Result<File, FileError> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(target)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FileError::Symlink { path: path.into() },
            // A folder opened for writing; a FIFO without a reader or a
            // socket (O_NONBLOCK makes those fail instead of waiting).
            Some(libc::EISDIR | libc::ENXIO) => FileError::NotRegular { path: path.into() },
            _ => classify(path, e),
        })
}

/// The file's length, if it is a regular file.
fn regular_len(file: &File, path: &str) -> Result<u64, FileError> {
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular { path: path.into() });
    }
    Ok(meta.len())
}

fn classify(path: &str, e: io::Error) -> FileError {
    match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound { path: path.into() },
        io::ErrorKind::PermissionDenied => FileError::Denied { path: path.into() },
        _ if e.raw_os_error() == Some(libc::ENOTDIR) => FileError::NotFound { path: path.into() },
        _ => io_error(path, e),
    }
}

fn io_error(path: &str, source: io::Error) -> FileError {
    FileError::Io {
        path: path.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A shared root inside a scratch folder, with a sibling outside it.
    struct Scratch {
        dir: PathBuf,
        shared: SharedFolder,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("husk-agent-files-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("root/sub")).unwrap();
            std::fs::create_dir_all(dir.join("outside")).unwrap();
            std::fs::write(dir.join("outside/secret"), b"secret").unwrap();
            let shared = SharedFolder::new(dir.join("root"));
            Self { dir, shared }
        }

        fn path(&self, rel: &str) -> String {
            self.dir.join("root").join(rel).display().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn status(e: FileError) -> (tonic::Code, String) {
        let s = Status::from(e);
        (s.code(), s.message().to_owned())
    }

    #[test]
    fn writes_then_reads_back_with_the_mode() {
        let s = Scratch::new("rw");
        let path = s.path("sub/a.txt");
        s.shared.write(&path, b"hello", 0o640).unwrap();
        assert_eq!(s.shared.read(&path, 0).unwrap(), b"hello");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        // Replacing truncates; setuid is dropped; 0 means 0o644.
        s.shared.write(&path, b"hi", 0o4755).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hi");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        s.shared.write(&path, b"", 0).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
    }

    #[test]
    fn rejects_relative_dotdot_and_outside_paths() {
        let s = Scratch::new("lexical");
        let cases = [
            ("sub/a".to_owned(), "not absolute"),
            (s.path("sub/../../outside/secret"), "`..`"),
            (
                s.dir.join("outside/secret").display().to_string(),
                "not a file under",
            ),
            (s.path(""), "not a file under"),
        ];
        for (path, want) in cases {
            let (code, message) = status(s.shared.read(&path, 0).unwrap_err());
            assert_eq!(code, tonic::Code::InvalidArgument, "{path}: {message}");
            assert!(message.contains(want), "{path}: {message}");
            assert!(message.contains(&path), "{path}: {message}");
        }
    }

    #[test]
    fn symlinks_do_not_lead_out() {
        let s = Scratch::new("symlinks");
        symlink(s.dir.join("outside"), s.dir.join("root/out")).unwrap();
        symlink(s.dir.join("outside/secret"), s.dir.join("root/link")).unwrap();
        for rel in ["out/secret", "link"] {
            let path = s.path(rel);
            let (code, message) = status(s.shared.read(&path, 0).unwrap_err());
            assert_eq!(code, tonic::Code::PermissionDenied, "{rel}: {message}");
            assert!(message.contains(&path), "{message}");
            let (code, _) = status(s.shared.write(&path, b"x", 0).unwrap_err());
            assert_eq!(code, tonic::Code::PermissionDenied, "{rel}");
        }
        assert_eq!(
            std::fs::read(s.dir.join("outside/secret")).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn missing_files_and_folders_are_not_found() {
        let s = Scratch::new("missing");
        for rel in ["nope", "nodir/nope"] {
            let path = s.path(rel);
            let (code, message) = status(s.shared.read(&path, 0).unwrap_err());
            assert_eq!(code, tonic::Code::NotFound, "{rel}: {message}");
            assert!(message.contains(&path), "{message}");
        }
        let (code, _) = status(s.shared.write(&s.path("nodir/x"), b"x", 0).unwrap_err());
        assert_eq!(code, tonic::Code::NotFound);
    }

    #[test]
    fn only_regular_files() {
        let s = Scratch::new("kinds");
        let dir = s.path("sub");
        assert_eq!(
            status(s.shared.read(&dir, 0).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            status(s.shared.write(&dir, b"x", 0).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
        let fifo = s.path("fifo");
        nix::unistd::mkfifo(
            fifo.as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        // Neither blocks on the FIFO nor truncates anything.
        assert_eq!(
            status(s.shared.read(&fifo, 0).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            status(s.shared.write(&fifo, b"x", 0).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let s = Scratch::new("sizes");
        let path = s.path("big");
        s.shared.write(&path, &[7u8; 100], 0).unwrap();
        assert_eq!(s.shared.read(&path, 100).unwrap().len(), 100);
        let (code, message) = status(s.shared.read(&path, 99).unwrap_err());
        assert_eq!(code, tonic::Code::OutOfRange, "{message}");
        let too_high = MAX_FILE_BYTES as u32 + 1;
        assert_eq!(
            status(s.shared.read(&path, too_high).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
        let big = vec![0u8; MAX_FILE_BYTES + 1];
        assert_eq!(
            status(s.shared.write(&path, &big, 0).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
        s.shared.write(&path, &big[1..], 0).unwrap();
        assert_eq!(s.shared.read(&path, 0).unwrap().len(), MAX_FILE_BYTES);
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(
            status(s.shared.read(&long, 0).unwrap_err()).0,
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn a_missing_root_is_a_failed_precondition() {
        let shared = SharedFolder::new("/no/such/husk/root");
        let (code, message) = status(shared.read("/no/such/husk/root/a", 0).unwrap_err());
        assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
        assert!(message.contains("/no/such/husk/root"), "{message}");
    }
}
