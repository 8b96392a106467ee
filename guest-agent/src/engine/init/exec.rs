//! Finding the program and replacing the init with it.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Process;

/// The PATH used when the process's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the program could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("executable file {name:?} not found in $PATH ({path})")]
    NotInPath { name: String, path: String },
    #[error("executable {0:?} does not exist")]
    Missing(String),
    #[error("{0:?} is not an executable regular file")]
    NotExecutable(String),
    #[error("exec {name:?}: {source}")]
    Exec {
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// A program ready for execve: resolved path, argv and envp.
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    name: String,
}

fn cstring(s: &str) -> CString {
    // The spec checks refused NUL bytes before the init started.
    CString::new(s).unwrap_or_default()
}

fn is_executable_file(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves args[0] the way execvp would (relative to the cwd when it has
/// a slash, else along the process's PATH), in the container's root.
pub fn resolve(process: &Process) -> Result<Program, ExecError> {
    let args = process.args().clone().unwrap_or_default();
    let name = args.first().cloned().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let path = if name.contains('/') {
        let p = PathBuf::from(&name);
        if !p.exists() {
            return Err(ExecError::Missing(name));
        }
        if !is_executable_file(&p) {
            return Err(ExecError::NotExecutable(name));
        }
        p
    } else {
        let search = env
            .iter()
            .find_map(|v| v.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_owned();
        search
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(&name))
            .find(|p| is_executable_file(p))
            .ok_or(ExecError::NotInPath {
                name: name.clone(),
                path: search,
            })?
    };
    Ok(Program {
        path: CString::new(OsStr::as_bytes(path.as_os_str())).unwrap_or_default(),
        argv: args.iter().map(|a| cstring(a)).collect(),
        envp: env.iter().map(|v| cstring(v)).collect(),
        name,
    })
}

impl Program {
    /// Replaces this process; returns only on failure.
    pub fn exec(&self) -> ExecError {
        let Err(source) = nix::unistd::execve(&self.path, &self.argv, &self.envp);
        ExecError::Exec {
            name: self.name.clone(),
            source,
        }
    }
}
