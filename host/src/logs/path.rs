//! Where a container's log file goes: CRI `log_path` is relative to the
//! pod's `log_directory`. Both come from kubelet, but they name a file the
//! daemon creates as root, so they are checked before use.

use std::path::{Component, Path, PathBuf};

/// A `log_directory` or `log_path` the daemon will not write to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogPathError {
    #[error("{field}: {value:?} {reason}")]
    Invalid {
        /// `log_directory` (of the PodSandboxConfig) or `log_path` (of the
        /// ContainerConfig).
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

const DIRECTORY: &str = "log_directory";
const PATH: &str = "log_path";

/// The container's log file, or `None` when `log_path` is empty (the
/// container's output is then not logged). Purely lexical: the filesystem
/// is not touched, and the parent folder is kubelet's to create.
pub fn validate_log_path(
    log_directory: &str,
    log_path: &str,
) -> Result<Option<PathBuf>, LogPathError> {
    if log_path.is_empty() {
        return Ok(None);
    }
    let bad = |field, value: &str, reason| {
        Err(LogPathError::Invalid {
            field,
            value: value.to_string(),
            reason,
        })
    };
    if log_directory.is_empty() {
        return bad(DIRECTORY, log_directory, "is empty but log_path is set");
    }
    if log_directory.contains('\0') {
        return bad(DIRECTORY, log_directory, "contains a NUL byte");
    }
    if log_path.contains('\0') {
        return bad(PATH, log_path, "contains a NUL byte");
    }
    let directory = Path::new(log_directory);
    if !directory.is_absolute() {
        return bad(DIRECTORY, log_directory, "is not an absolute path");
    }
    if has_parent_dir(directory) {
        return bad(DIRECTORY, log_directory, "has a `..` component");
    }
    let path = Path::new(log_path);
    if path.is_absolute() {
        return bad(
            PATH,
            log_path,
            "is absolute; it must be relative to log_directory",
        );
    }
    if has_parent_dir(path) {
        return bad(PATH, log_path, "has a `..` component");
    }
    if log_path.ends_with('/') || path.file_name().is_none() {
        return bad(PATH, log_path, "does not name a file");
    }
    Ok(Some(directory.join(path)))
}

fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(dir: &str, path: &str) -> &'static str {
        match validate_log_path(dir, path).unwrap_err() {
            LogPathError::Invalid { field, .. } => field,
        }
    }

    #[test]
    fn the_path_is_joined() {
        assert_eq!(
            validate_log_path("/var/log/pods/ns_pod_uid", "app/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/ns_pod_uid/app/0.log"))
        );
        assert_eq!(
            validate_log_path("/var/log/pods/x/", "./0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/x/./0.log"))
        );
    }

    #[test]
    fn an_empty_log_path_means_no_log() {
        assert_eq!(validate_log_path("/var/log/pods/x", "").unwrap(), None);
        assert_eq!(validate_log_path("", "").unwrap(), None);
        assert_eq!(validate_log_path("relative", "").unwrap(), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(field_of("", "0.log"), "log_directory");
        assert_eq!(field_of("var/log/pods", "0.log"), "log_directory");
        assert_eq!(field_of("/var/log/../etc", "0.log"), "log_directory");
        assert_eq!(field_of("/var/log\0", "0.log"), "log_directory");
        assert_eq!(field_of("/var/log/pods", "/etc/passwd"), "log_path");
        assert_eq!(field_of("/var/log/pods", "../../etc/passwd"), "log_path");
        assert_eq!(field_of("/var/log/pods", "app/../../x.log"), "log_path");
        assert_eq!(field_of("/var/log/pods", "a\0b"), "log_path");
        assert_eq!(field_of("/var/log/pods", "app/"), "log_path");
        assert_eq!(field_of("/var/log/pods", "."), "log_path");
        let e = validate_log_path("/p", "/abs").unwrap_err().to_string();
        assert!(e.starts_with("log_path: \"/abs\""), "{e}");
    }
}
