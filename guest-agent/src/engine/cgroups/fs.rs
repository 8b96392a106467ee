//! Reading and writing cgroup control files, creating and removing cgroup
//! directories. Every failure carries the path (and the value written).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::CgroupError;

/// How long `rmdir` may keep answering EBUSY: the kernel releases a
/// cgroup's last task asynchronously after the process is gone.
const RMDIR_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes `value` with a single `write(2)`, as the kernel parses each write
/// on its own. Never creates the file: a missing control file means the
/// controller is absent, and creating one would hide that.
pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// Writes `value` when the file exists; for controls a kernel may lack.
pub fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    match write(path, value) {
        Err(CgroupError::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// The file's content, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The file's content; an absent optional file reads as empty.
pub fn read_or_empty(path: &Path) -> Result<String, CgroupError> {
    Ok(read_optional(path)?.unwrap_or_default())
}

pub fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Fails with NotFound when the cgroup is gone, so that stats of a destroyed
/// cgroup are an error rather than a row of zeros.
pub fn require_dir(dir: &Path) -> Result<(), CgroupError> {
    fs::metadata(dir)
        .map(drop)
        .map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })
}

/// The processes directly in `dir` (none when the cgroup does not exist).
pub fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let content = read_or_empty(&dir.join("cgroup.procs"))?;
    Ok(content
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The processes in `dir` and every cgroup below it.
pub fn procs_recursive(dir: &Path, out: &mut Vec<u32>) -> Result<(), CgroupError> {
    out.extend(procs(dir)?);
    for child in subdirs(dir)? {
        procs_recursive(&child, out)?;
    }
    Ok(())
}

/// Creates one cgroup directory; `Ok(false)` when it already existed.
pub fn make_dir(path: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes a cgroup and any cgroups nested in it (a container may create
/// its own), children first. Absent is success, so this is idempotent.
pub fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in subdirs(dir)? {
        remove_tree(&child)?;
    }
    let deadline = Instant::now() + RMDIR_BUSY_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Child cgroups: in cgroupfs every subdirectory is one.
fn subdirs(dir: &Path) -> Result<Vec<std::path::PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut dirs = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-cg-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_never_creates_files() {
        let dir = temp_dir("nocreate");
        let err = write(&dir.join("memory.max"), "1").unwrap_err();
        assert!(err.to_string().contains("memory.max"), "{err}");
        assert!(err.to_string().contains("\"1\""), "{err}");
        write_if_present(&dir.join("io.weight"), "default 100").unwrap();
        assert!(!dir.join("io.weight").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn procs_are_collected_from_nested_cgroups() {
        let dir = temp_dir("procs");
        fs::create_dir(dir.join("inner")).unwrap();
        fs::write(dir.join("cgroup.procs"), "10\n11\n").unwrap();
        fs::write(dir.join("inner/cgroup.procs"), "12\n").unwrap();
        let mut pids = Vec::new();
        procs_recursive(&dir, &mut pids).unwrap();
        pids.sort_unstable();
        assert_eq!(pids, [10, 11, 12]);
        assert!(procs(&dir.join("gone")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remove_tree_removes_children_first_and_is_idempotent() {
        let dir = temp_dir("rmtree");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
        remove_tree(&dir).unwrap();
    }
}
