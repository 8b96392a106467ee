//! What the agent tells a container's init process, and how. The init is
//! the agent binary re-executed (`husk-agent __container-init`), so it
//! starts single-threaded and may allocate, unlike code between fork and
//! exec in the multi-threaded agent.
//!
//! fd 3, control (agent → init): a little-endian u32 length and the JSON
//! [`InitConfig`]; later one [`START`] byte, or end of file to abort.
//! fd 4, status (init → agent): one line, `ok` once everything up to the
//! exec is done, or `error <message>`. The init keeps fd 4 close-on-exec,
//! so after [`START`] end of file means the exec succeeded and an `error`
//! line that it failed.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

/// The argv[1] that turns the agent binary into a container init.
pub const INIT_ARG: &str = "__container-init";
/// Where the init finds the control pipe.
pub const CONTROL_FD: i32 = 3;
/// Where the init finds the status pipe.
pub const STATUS_FD: i32 = 4;
/// The byte that lets a created process exec.
pub const START: u8 = 1;
/// Largest config the init accepts: the spec bound plus room for paths.
const MAX_CONFIG_BYTES: u32 = 4 * 1024 * 1024;

/// Everything the init needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// The container's spec (for an exec too: its seccomp applies).
    pub spec: Spec,
    /// The process to run.
    pub process: Process,
    pub mode: InitMode,
}

/// A new container, or a process joining a running one.
#[derive(Debug, Serialize, Deserialize)]
pub enum InitMode {
    Container {
        rootfs: PathBuf,
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        cgroup_dir: Option<PathBuf>,
        bind_roots: Vec<PathBuf>,
    },
    /// Join the namespaces of this pid (the container's init, as the agent
    /// sees it). The pid namespace was already joined by the agent.
    Exec { target_pid: u32 },
}

pub fn write_config(w: &mut impl Write, config: &InitConfig) -> io::Result<()> {
    let json = serde_json::to_vec(config)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&l| l <= MAX_CONFIG_BYTES)
        .ok_or_else(|| io::Error::other("init config too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&json)?;
    w.flush()
}

pub fn read_config(r: &mut impl Read) -> io::Result<InitConfig> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_CONFIG_BYTES {
        return Err(io::Error::other(format!("init config of {len} bytes")));
    }
    let mut json = vec![0; len as usize];
    r.read_exact(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

/// Parses one status line: Ok(()) for `ok`, Err(message) otherwise.
pub fn parse_status(line: &str) -> Result<(), String> {
    match line.trim_end() {
        "ok" => Ok(()),
        l => Err(l.strip_prefix("error ").unwrap_or(l).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let config = InitConfig {
            spec: Spec::default(),
            process: Process::default(),
            mode: InitMode::Exec { target_pid: 42 },
        };
        let mut buf = Vec::new();
        write_config(&mut buf, &config).unwrap();
        let back = read_config(&mut buf.as_slice()).unwrap();
        assert!(matches!(back.mode, InitMode::Exec { target_pid: 42 }));
        assert_eq!(back.process, config.process);
    }

    #[test]
    fn oversized_length_is_refused() {
        let buf = (MAX_CONFIG_BYTES + 1).to_le_bytes();
        assert!(read_config(&mut buf.as_slice()).is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("ok\n"), Ok(()));
        assert_eq!(parse_status("error boom\n"), Err("boom".into()));
        assert_eq!(parse_status(""), Err(String::new()));
    }
}
