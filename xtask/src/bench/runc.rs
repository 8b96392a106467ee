//! runc, the reference `cargo xtask bench agent` runs the same bundle with.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context};
use husk_tests::busybox;

use super::workload::{EXEC_ARGS, SLEEPER, SLEEPER_ARGS, TRUE_ARGS};
use crate::cmd;

/// runc with its state, log and bundles in the benchmark's scratch folder,
/// so nothing it does touches the host's own runc state.
pub(super) struct Runc {
    root: PathBuf,
    log: PathBuf,
    /// Runs [`TRUE_ARGS`].
    bundle: PathBuf,
    /// Runs [`SLEEPER_ARGS`].
    sleeper_bundle: PathBuf,
}

impl Runc {
    /// Writes both bundles, each with its own copy of `layer` as rootfs.
    pub(super) fn new(scratch: &Path, layer: &Path) -> anyhow::Result<Self> {
        let runc = Self {
            root: scratch.join("runc"),
            log: scratch.join("runc.log"),
            bundle: scratch.join("bundle"),
            sleeper_bundle: scratch.join("bundle-sleeper"),
        };
        write_bundle(&runc.bundle, layer, TRUE_ARGS)?;
        write_bundle(&runc.sleeper_bundle, layer, SLEEPER_ARGS)?;
        Ok(runc)
    }

    /// `runc run` of the [`TRUE_ARGS`] bundle: create, start, wait and
    /// delete in one command, like the agent's four calls.
    pub(super) fn create_start(&self, id: &str) -> anyhow::Result<()> {
        let mut run = self.command();
        run.args(["run", "--bundle"]).arg(&self.bundle).arg(id);
        let result = self.check(&mut run);
        if result.is_err() {
            let _ = self.delete(id);
        }
        result
    }

    /// Starts [`SLEEPER`] detached.
    pub(super) fn start_sleeper(&self) -> anyhow::Result<()> {
        let mut run = self.command();
        run.args(["run", "-d", "--bundle"])
            .arg(&self.sleeper_bundle)
            .arg(SLEEPER);
        let result = self.check(&mut run);
        if result.is_err() {
            let _ = self.delete(SLEEPER);
        }
        result
    }

    /// `runc exec` of [`EXEC_ARGS`] in [`SLEEPER`]; runc waits for it.
    pub(super) fn exec(&self) -> anyhow::Result<()> {
        self.check(self.command().args(["exec", SLEEPER]).args(EXEC_ARGS))
    }

    /// Force-deletes container `id`, running or not.
    pub(super) fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.check(self.command().args(["delete", "-f", id]))
    }

    /// runc with our state root and log. Its stdio, which the container
    /// inherits, is null: a detached container must not hold our pipes.
    fn command(&self) -> Command {
        let mut runc = Command::new("runc");
        runc.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        runc
    }

    /// Runs `cmd`, failing unless it exits 0; runc's errors are in its log.
    fn check(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        ensure!(
            status.success(),
            "{cmd:?} failed ({status}); the end of runc's log:\n{}",
            last_lines(&fs::read_to_string(&self.log).unwrap_or_default(), 10)
        );
        Ok(())
    }
}

/// A runc bundle at `dir`: a copy of `layer` as rootfs (`cp -a` keeps
/// modes and symlinks) and `default_spec(args)` as config.json.
fn write_bundle(dir: &Path, layer: &Path, args: &[&str]) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let rootfs = dir.join("rootfs");
    cmd::run(Command::new("cp").arg("-a").arg(layer).arg(&rootfs))?;
    let spec = serde_json::to_vec_pretty(&busybox::default_spec(args))?;
    fs::write(dir.join("config.json"), spec)?;
    Ok(())
}

/// The last `n` lines of `text`: a log's end says why the last step failed.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
