//! Starting a container init (or an exec) from the agent: stdio, the two
//! init pipes, the pid namespace, the spawn through the reaper, the cgroup,
//! then the config and the `ok`/`error` handshake. Blocking: run it on a
//! blocking thread.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::{pipe2, Pid};

use super::cgroups::Cgroup;
use super::init::protocol::{self, InitConfig, CONTROL_FD, INIT_ARG, START, STATUS_FD};
use super::init::status::StatusReader;
use super::stdio::{self, AgentStdio};
use crate::reaper::{ExitStatus, Reaper};

/// How long an init may take to report `ok` (rootfs mounts over virtio-fs
/// included) before the agent gives up on it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the exec after START may take to report.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create stdio: {0}")]
    Stdio(#[source] io::Error),
    #[error("cannot enter the pid namespace {what}: {source}")]
    PidNamespace {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot start the container init: {0}")]
    Spawn(#[source] io::Error),
    #[error("cannot place the process in its cgroup: {0}")]
    Cgroup(String),
    #[error("cannot talk to the container init: {0}")]
    Pipe(#[source] io::Error),
    #[error("{0}")]
    Init(String),
    #[error("the container init did not report within {0:?}")]
    Timeout(Duration),
}

/// Which pid namespace the new process is born in.
pub enum PidNamespace {
    /// The agent's own.
    Same,
    /// A new one (the process is its pid 1).
    New,
    /// An existing one, by its nsfs path.
    Join(PathBuf),
}

/// A spawned init that reported `ok`; it execs once its [`StartGate`]
/// opens.
pub struct Launched {
    pub pid: u32,
    pub exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    pub stdio: AgentStdio,
    pub gate: StartGate,
}

/// The init's pipes. Dropping it unopened makes the init exit.
pub struct StartGate {
    control: File,
    status: StatusReader,
}

/// Moves `fd` to a number of 10 or more (close-on-exec), so the pre-exec
/// dup2 onto 3 and 4 never clobbers one with the other.
fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that we now own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Spawns the init and waits for its `ok`. On any failure the child is
/// killed (the reaper collects it) and nothing else is left behind.
pub fn launch(
    reaper: &Reaper,
    pid_ns: PidNamespace,
    terminal: bool,
    stdin: bool,
    cgroup: &Cgroup,
    config: &InitConfig,
) -> Result<Launched, LaunchError> {
    let (child_stdio, agent_stdio) = stdio::create(terminal, stdin).map_err(LaunchError::Stdio)?;
    let pipes = || -> io::Result<_> {
        let (control_r, control_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (status_r, status_w) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((high_fd(control_r)?, control_w, status_r, high_fd(status_w)?))
    };
    let (control_r, control_w, status_r, status_w) = pipes().map_err(LaunchError::Pipe)?;

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("husk-agent")
        .arg(INIT_ARG)
        .env_clear()
        .stdin(child_stdio.stdin)
        .stdout(child_stdio.stdout)
        .stderr(child_stdio.stderr);
    let (control_raw, status_raw) = (control_r.as_raw_fd(), status_w.as_raw_fd());
    // SAFETY: only dup2, which is async-signal-safe, runs between fork and
    // exec; the fds stay open in the parent until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(control_raw, CONTROL_FD) < 0 || libc::dup2(status_raw, STATUS_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = spawn_in_pid_ns(reaper, &mut cmd, pid_ns)?;
    drop(cmd);
    drop((control_r, status_w));
    let pid = spawned.pid;
    let abort = |e: LaunchError| {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        e
    };

    cgroup
        .add_process(pid)
        .map_err(|e| abort(LaunchError::Cgroup(e.to_string())))?;
    let mut control = File::from(control_w);
    protocol::write_config(&mut control, config).map_err(|e| abort(LaunchError::Pipe(e)))?;
    let mut status = StatusReader::new(status_r);
    let fds = read_status(&mut status, SETUP_TIMEOUT).map_err(abort)?;
    let agent_stdio = match (terminal, fds.into_iter().next()) {
        (false, _) => agent_stdio,
        (true, Some(master)) => {
            stdio::terminal(master).map_err(|e| abort(LaunchError::Stdio(e)))?
        }
        (true, None) => return Err(abort(LaunchError::Init("the init sent no terminal".into()))),
    };
    Ok(Launched {
        pid,
        exit: spawned.exit,
        stdio: agent_stdio,
        gate: StartGate { control, status },
    })
}

/// Spawns on a fresh thread whose pid namespace for children is `pid_ns`,
/// so the agent's other threads are never affected.
fn spawn_in_pid_ns(
    reaper: &Reaper,
    cmd: &mut Command,
    pid_ns: PidNamespace,
) -> Result<crate::reaper::Spawned, LaunchError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                match &pid_ns {
                    PidNamespace::Same => {}
                    PidNamespace::New => unshare(CloneFlags::CLONE_NEWPID).map_err(|source| {
                        LaunchError::PidNamespace {
                            what: "new".into(),
                            source,
                        }
                    })?,
                    PidNamespace::Join(path) => {
                        let what = path.display().to_string();
                        let file = File::open(path).map_err(|e| LaunchError::PidNamespace {
                            what: what.clone(),
                            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                        })?;
                        setns(file, CloneFlags::CLONE_NEWPID)
                            .map_err(|source| LaunchError::PidNamespace { what, source })?;
                    }
                }
                reaper.spawn(cmd).map_err(LaunchError::Spawn)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(LaunchError::Spawn(io::Error::other(
                    "spawn thread panicked",
                )))
            })
    })
}

/// Waits for the init's `ok` (and the fds it passed) or its error.
fn read_status(status: &mut StatusReader, timeout: Duration) -> Result<Vec<OwnedFd>, LaunchError> {
    match status.read_line(timeout) {
        Ok(Some(line)) => {
            protocol::parse_status(&line.line).map_err(LaunchError::Init)?;
            Ok(line.fds)
        }
        Ok(None) => Err(LaunchError::Init(
            "the container init exited without reporting".into(),
        )),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(LaunchError::Timeout(timeout)),
        Err(e) => Err(LaunchError::Pipe(e)),
    }
}

impl StartGate {
    /// Lets the init exec its program; Err if the exec failed.
    pub fn start(mut self) -> Result<(), LaunchError> {
        self.control
            .write_all(&[START])
            .map_err(LaunchError::Pipe)?;
        // End of file: the exec closed the status socket (close-on-exec).
        let rest = match self.status.read_line(EXEC_TIMEOUT) {
            Ok(None) => return Ok(()),
            Ok(Some(line)) => line.line,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(LaunchError::Timeout(EXEC_TIMEOUT))
            }
            Err(e) => return Err(LaunchError::Pipe(e)),
        };
        Err(LaunchError::Init(
            protocol::parse_status(&rest).err().unwrap_or_default(),
        ))
    }
}
