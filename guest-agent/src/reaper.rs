//! Reaps every child process of the agent.
//!
//! As PID 1 the agent inherits every orphan in the guest (and outside a VM it
//! makes itself a child subreaper so it behaves the same for its own
//! descendants). Unreaped children stay zombies forever, so on every SIGCHLD
//! we `waitpid(-1, WNOHANG)` until nothing is left to collect.
//!
//! That loop would steal the exit status from anyone else who waits for a
//! specific child. So the rule for the rest of the agent is: spawn child
//! processes only through [`Reaper::spawn`] and learn their exit from the
//! receiver it returns. Do not use `tokio::process` or
//! `std::process::Child::wait`: they would see `ECHILD`.

use std::collections::HashMap;
use std::io;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called exit with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled { signal: i32, core_dumped: bool },
}

/// Why the reaper could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot install the SIGCHLD handler: {0}")]
    Signal(#[source] io::Error),
}

/// A child started through [`Reaper::spawn`]. There is deliberately no
/// `wait`: the exit status arrives on `exit`.
#[derive(Debug)]
#[allow(dead_code)] // the container engine will use the stdio handles
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Handle to the reaper task; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    /// Who wants to hear about which pid. Held across fork+register in
    /// [`Reaper::spawn`] so a child that dies at once is never reaped before
    /// its waiter is registered.
    waiters: Arc<Mutex<HashMap<u32, oneshot::Sender<ExitStatus>>>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task. Must be
    /// called from inside the tokio runtime, before any child is spawned.
    pub fn start() -> Result<Self, ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Self::default();
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                // Also runs once at start: children may have exited before
                // the handler existed, and SIGCHLDs coalesce.
                task.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Starts `cmd` and registers for its exit status.
    #[allow(dead_code)] // the container engine spawns through this
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        let mut waiters = self.lock();
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let (tx, exit) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok(Spawned {
            pid,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            exit,
        })
        // `child` is dropped without waiting: its status is ours to collect.
    }

    /// Collects every child that has exited, telling registered waiters.
    fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, core_dumped)) => (
                    pid,
                    ExitStatus::Signaled {
                        signal: sig as i32,
                        core_dumped,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                // Stop/continue reports need WUNTRACED/WCONTINUED; not asked.
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("husk-agent: waitpid failed: {e}");
                    return;
                }
            };
            if let Some(tx) = waiters.remove(&(pid.as_raw() as u32)) {
                // The waiter may have lost interest; that is fine.
                let _ = tx.send(status);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, oneshot::Sender<ExitStatus>>> {
        // A panic while holding the lock leaves the map consistent enough.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    async fn exit_of(reaper: &Reaper, script: &str) -> ExitStatus {
        let child = reaper
            .spawn(Command::new("/bin/sh").args(["-c", script]))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), child.exit)
            .await
            .expect("no exit status within 10 s")
            .expect("reaper dropped the waiter")
    }

    fn is_zombie_or_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit(") ").next().unwrap().starts_with('Z'),
        }
    }

    // One test, so the SIGCHLD loop and the subreaper setting are not
    // shared between concurrently running tests of this binary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_exits_and_reaps_orphans() {
        let reaper = Reaper::start().unwrap();

        assert_eq!(exit_of(&reaper, "exit 7").await, ExitStatus::Exited(7));
        assert_eq!(
            exit_of(&reaper, "kill -9 $$").await,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );

        // An orphan re-parented to us (as to PID 1) must not stay a zombie.
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let mut child = reaper
            .spawn(
                Command::new("/bin/sh")
                    .args(["-c", "sleep 0.2 >/dev/null & echo $!"])
                    .stdout(Stdio::piped()),
            )
            .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let orphan: u32 = out.trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Gone from /proc means reaped; a zombie would stay listed.
            if std::fs::metadata(format!("/proc/{orphan}")).is_err() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "orphan {orphan} not reaped (zombie: {})",
                is_zombie_or_gone(orphan)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
