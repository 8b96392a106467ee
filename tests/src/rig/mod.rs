//! The nested KVM test rig.
//!
//! The development machines' own `/dev/kvm` cannot boot Linux (see
//! `shared/RIG.md`). The rig boots an "L1" test host under QEMU's software
//! emulation with an emulated AMD CPU that has SVM; inside L1, `kvm-amd` gives
//! a real `/dev/kvm` on which our VMMs boot our guest ("L2"). Where the host's
//! own KVM can boot Linux (`kvm_intel` or `kvm_amd` loaded) the same command
//! runs natively instead, and says so.
//!
//! A command runs with `$HUSK_RIG_DIR` pointing at a folder holding the
//! [`Payload`] files; its output and exit status come back as a [`RigRun`].

mod console;
mod l1;
mod native;
mod nested;
mod tsc;
mod vmlinux;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use console::EXIT_MARKER;
pub use l1::{prepare as prepare_l1, L1Assets};

/// The command line, stored beside the payload files.
const COMMAND_FILE: &str = ".husk-rig-command";
/// The wrapper script that runs it between the console markers.
const RUNNER_FILE: &str = ".husk-rig-run";

/// Errors of the rig itself (a failing command is not one: see [`RigRun`]).
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("rig setup failed: {0:#}")]
    Setup(#[from] anyhow::Error),
    #[error("rig I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("rig timed out after {timeout:?} running {command:?}; last output:\n{tail}")]
    Timeout {
        command: String,
        timeout: Duration,
        tail: String,
    },
    #[error(
        "the rig's test host did not start the command within {waited:?}; last output:\n{tail}"
    )]
    StartupTimeout { waited: Duration, tail: String },
    #[error(
        "the rig's test host stopped responding: no output but its own kernel log, not even its heartbeat, for {silent_for:?} \
         (a hang of software-emulated nested KVM, or of L1); last output:\n{tail}"
    )]
    Unresponsive { silent_for: Duration, tail: String },
    #[error("the rig's test host failed before the command started; last output:\n{tail}")]
    HostFailed { tail: String },
    #[error("rig L1 host ended without reporting the command's exit status; last output:\n{tail}")]
    NoExitStatus { tail: String },
}

/// Where a command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside the nested L1 host under software emulation.
    Nested,
    /// Directly on this host, whose KVM can boot Linux.
    Native,
}

impl Mode {
    /// `HUSK_RIG_MODE=nested|native` forces a mode; otherwise native exactly
    /// when the host has a KVM that can boot Linux.
    pub fn detect() -> Result<Mode, RigError> {
        match std::env::var("HUSK_RIG_MODE").ok().as_deref() {
            Some("nested") => Ok(Mode::Nested),
            Some("native") => Ok(Mode::Native),
            Some(other) => Err(RigError::Setup(anyhow::anyhow!(
                "HUSK_RIG_MODE={other:?}: expected \"nested\" or \"native\""
            ))),
            None if host_kvm_boots_linux() => Ok(Mode::Native),
            None => Ok(Mode::Nested),
        }
    }
}

/// True when `kvm_intel` or `kvm_amd` is loaded (a PVM-backed `/dev/kvm`
/// cannot boot Linux).
pub fn host_kvm_boots_linux() -> bool {
    Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists()
}

/// Files made available to the command under `$HUSK_RIG_DIR`.
#[derive(Debug, Default, Clone)]
pub struct Payload {
    files: Vec<(PathBuf, PathBuf)>,
}

impl Payload {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `source` as `$HUSK_RIG_DIR/<dest>` (a relative path).
    pub fn file(mut self, source: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.files.push((source.into(), dest.into()));
        self
    }

    /// Adds every file below the folder `source` under `dest`, keeping the
    /// layout (symlinks are not followed or carried).
    pub fn dir(mut self, source: &Path, dest: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dest = dest.into();
        for entry in std::fs::read_dir(source)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let target = dest.join(entry.file_name());
            if kind.is_dir() {
                self = self.dir(&entry.path(), target)?;
            } else if kind.is_file() {
                self.files.push((entry.path(), target));
            }
        }
        Ok(self)
    }

    /// Copies every file into `dir` (executable bits kept), with the command
    /// and the wrapper that runs it.
    fn materialize(&self, dir: &Path, command: &str) -> Result<(), RigError> {
        std::fs::write(dir.join(COMMAND_FILE), command)?;
        std::fs::write(dir.join(RUNNER_FILE), watch::wrapper())?;
        for (source, dest) in &self.files {
            if dest.is_absolute() || dest.components().any(|c| c.as_os_str() == "..") {
                return Err(RigError::Setup(anyhow::anyhow!(
                    "payload destination {dest:?} must be relative and stay inside the payload"
                )));
            }
            let target = dir.join(dest);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(source, &target).map_err(|e| {
                RigError::Setup(anyhow::anyhow!("cannot copy payload file {source:?}: {e}"))
            })?;
        }
        Ok(())
    }
}

/// How to run the rig.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whole-run deadline, rig start-up included.
    pub timeout: Duration,
    /// L1 memory (nested mode).
    pub memory_mib: u32,
    /// L1 vCPUs (nested mode).
    pub cpus: u32,
    /// Echo the command's output live to stderr as it arrives.
    pub echo: bool,
    /// A folder the command writes, copied back to this host afterwards.
    pub collect: Option<Collect>,
}

/// A folder the command writes under `$HUSK_RIG_DIR`, copied back to this
/// host after the run, whatever its outcome (a failed run's reports are the
/// ones worth reading). A folder the command never made is not an error:
/// the caller finds `to` missing.
#[derive(Debug, Clone)]
pub struct Collect {
    /// Relative to `$HUSK_RIG_DIR`.
    pub from: PathBuf,
    /// Replaced by the folder's copy.
    pub to: PathBuf,
}

impl Collect {
    fn check(&self) -> Result<(), RigError> {
        let name = self.from.file_name();
        if self.from.is_absolute()
            || name.is_none()
            || self.from.components().any(|c| c.as_os_str() == "..")
        {
            return Err(RigError::Setup(anyhow::anyhow!(
                "collected folder {:?} must be relative and stay inside the payload",
                self.from
            )));
        }
        Ok(())
    }

    /// Replaces `to` by a copy of `source` (if it exists).
    fn take_from(&self, source: &Path) -> Result<(), RigError> {
        if self.to.exists() {
            std::fs::remove_dir_all(&self.to)?;
        }
        if source.is_dir() {
            copy_tree(source, &self.to)?;
        }
        Ok(())
    }
}

/// Copies a folder of plain files and folders (symlinks are skipped: a
/// report folder has none, and following one could leave the payload).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(600),
            memory_mib: 4096,
            cpus: 2,
            echo: true,
            collect: None,
        }
    }
}

/// What a command run in the rig gave back.
#[derive(Debug, Clone)]
pub struct RigRun {
    pub mode: Mode,
    /// The command's stdout and stderr, interleaved as they arrived.
    pub output: String,
    /// The command's exit status.
    pub exit_code: i32,
    /// Time from starting L1 to the moment it began the command (zero
    /// natively).
    pub startup: Duration,
    /// Time the whole run took.
    pub total: Duration,
}

impl RigError {
    /// L1 itself failed (hung, or its kernel panicked), not the command.
    pub fn is_l1_wedged(&self) -> bool {
        match self {
            RigError::StartupTimeout { .. } | RigError::Unresponsive { .. } => true,
            RigError::NoExitStatus { tail } => tail.contains("Kernel panic"),
            _ => false,
        }
    }
}

impl RigRun {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// Runs `command` (a shell command line) with `payload` available under
/// `$HUSK_RIG_DIR`, in the nested rig or natively.
pub fn run(payload: &Payload, command: &str, options: &Options) -> Result<RigRun, RigError> {
    match run_once(payload, command, options) {
        // L1 is software-emulated, nested KVM included, and now and then
        // it wedges: in early boot (before the command starts), while a
        // guest boots (every L1 vCPU silent, heartbeat too, or soft
        // lockups in its kernel log), or its kernel panics while a vCPU
        // thread runs a guest (seen: "stack guard page was hit" in vcpu0).
        // The rig's commands are self-contained and start from a fresh
        // L1, so the run is retried once, loudly; a second hang fails.
        Err(error) if error.is_l1_wedged() && Mode::detect()? == Mode::Nested => {
            eprintln!("husk-rig: WARNING: retrying once in a fresh L1 after: {error}");
            run_once(payload, command, options)
        }
        other => other,
    }
}

/// Like [`run`], without the retry (for testing the rig's own failure
/// reports).
pub fn run_once(payload: &Payload, command: &str, options: &Options) -> Result<RigRun, RigError> {
    match Mode::detect()? {
        Mode::Native => native::run(payload, command, options),
        Mode::Nested => nested::run(payload, command, options),
    }
}

/// A fresh scratch folder for one run (removed by the caller).
fn scratch_dir(kind: &str) -> Result<PathBuf, RigError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("husk-rig-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod wedge_tests {
    use super::*;

    #[test]
    fn only_l1_failures_count_as_wedged() {
        let tail = |t: &str| t.to_string();
        assert!(RigError::Unresponsive {
            silent_for: Duration::from_secs(90),
            tail: tail("x")
        }
        .is_l1_wedged());
        assert!(RigError::NoExitStatus {
            tail: tail("[  188.47] Kernel panic - not syncing: corrupted stack end")
        }
        .is_l1_wedged());
        assert!(!RigError::NoExitStatus {
            tail: tail("bench: serial pod 3")
        }
        .is_l1_wedged());
        assert!(!RigError::HostFailed { tail: tail("x") }.is_l1_wedged());
    }
}
