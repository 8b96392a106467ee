//! The container init: what runs between the agent's spawn and the exec of
//! the container's program, inside the container's namespaces and cgroup.
//! It sets up the rootfs, hostname and sysctls (new containers), then the
//! process's identity, reports `ok`, waits for the start byte and execs.

mod exec;
mod identity;
mod namespaces;
pub mod protocol;
pub mod status;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use oci_spec::runtime::{Process, Spec};

use self::protocol::{InitConfig, InitMode, CONTROL_FD, START, STATUS_FD};
use super::rootfs::{self, RootfsPlan};
use super::seccomp;

/// Anything that stops the init before its exec; sent to the agent as text.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("reading the init config: {0}")]
    Config(#[source] std::io::Error),
    #[error(transparent)]
    Namespace(#[from] namespaces::NamespaceError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error("hostname {name:?}: {source}")]
    Hostname {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("linux.sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process.cwd {cwd}: {source}")]
    Cwd {
        cwd: String,
        #[source]
        source: nix::Error,
    },
    #[error("terminal: {0}")]
    Terminal(#[source] nix::Error),
    #[error("process.oomScoreAdj: {0}")]
    OomScore(#[source] std::io::Error),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error("reporting to the agent: {0}")]
    Status(#[source] std::io::Error),
    #[error("aborted by the agent")]
    Aborted,
}

/// Entry point for `husk-agent __container-init`. Never returns.
pub fn main() -> ! {
    // SAFETY: the agent placed these pipes at fds 3 and 4 before exec and
    // nothing else in this fresh process owns them.
    let mut control = unsafe { File::from_raw_fd(CONTROL_FD) };
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    // Nothing but stdio may reach the container's program.
    // SAFETY: close_range only changes fd flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    let err = match run(&mut control) {
        Err(InitError::Aborted) => std::process::exit(1),
        Err(e) => e,
    };
    let _ = writeln!(status, "error {err}");
    std::process::exit(127);
}

fn run(control: &mut File) -> Result<std::convert::Infallible, InitError> {
    let config = protocol::read_config(control).map_err(InitError::Config)?;
    let InitConfig {
        spec,
        process,
        mode,
    } = config;
    match mode {
        InitMode::Container {
            rootfs,
            lower,
            upper,
            work,
            cgroup_dir,
            bind_roots,
        } => {
            let new_uts = namespaces::enter_for_container(&spec)?;
            let plan = RootfsPlan {
                rootfs,
                lower,
                upper,
                work,
                cgroup_dir,
                bind_roots,
            };
            rootfs::enter(&spec, &plan)?;
            if new_uts {
                set_hostname(&spec)?;
            }
            apply_sysctls(&spec)?;
            rootfs::finalize(&spec)?;
        }
        InitMode::Exec { target_pid } => namespaces::enter_for_exec(target_pid)?,
    }
    let filters = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(seccomp::compile)
        .transpose()?;
    let (program, terminal) = prepare_process(&process)?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    if nnp {
        identity::set_no_new_privs()?;
    } else if let Some(filters) = &filters {
        // Without no_new_privileges loading a filter needs CAP_SYS_ADMIN,
        // which the user switch below may drop.
        filters.install()?;
    }
    identity::apply_bounding(&process)?;
    identity::switch_user(&process)?;
    identity::apply_umask(&process);

    let master = terminal.as_ref().map(AsRawFd::as_raw_fd);
    self::status::send_ok(STATUS_FD, master).map_err(InitError::Status)?;
    drop(terminal);
    let mut byte = [0u8];
    match control.read(&mut byte) {
        Ok(1) if byte[0] == START => {}
        _ => return Err(InitError::Aborted),
    }
    if nnp {
        if let Some(filters) = &filters {
            filters.install()?;
        }
    }
    Err(program.exec().into())
}

/// Terminal, cwd, oom score, rlimits and the program's path: everything
/// that still needs root or the init's view of the rootfs. Returns the
/// terminal's master side, for the agent, when the process has one.
fn prepare_process(process: &Process) -> Result<(exec::Program, Option<PtyMaster>), InitError> {
    let terminal = if process.terminal().unwrap_or(false) {
        Some(open_terminal(process).map_err(InitError::Terminal)?)
    } else {
        None
    };
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|source| InitError::Cwd {
        cwd: cwd.display().to_string(),
        source,
    })?;
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(InitError::OomScore)?;
    }
    identity::apply_rlimits(process)?;
    Ok((exec::resolve(process)?, terminal))
}

/// Allocates a terminal in the container's devpts (so `tty` and
/// /proc/self/fd/0 name a device the container can see), makes it our
/// controlling terminal and stdio, and hands it to the process's user.
fn open_terminal(process: &Process) -> Result<PtyMaster, nix::Error> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let user = process.user();
    nix::unistd::fchown(
        &slave,
        Some(nix::unistd::Uid::from_raw(user.uid())),
        Some(nix::unistd::Gid::from_raw(user.gid())),
    )?;
    if let Some(size) = process.console_size() {
        let ws = libc::winsize {
            ws_row: u16::try_from(size.height()).unwrap_or(u16::MAX),
            ws_col: u16::try_from(size.width()).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    nix::unistd::setsid()?;
    for target in 0..3 {
        // SAFETY: dup2 onto stdio; the slave fd stays valid until dropped.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(nix::Error::last());
        }
    }
    // SAFETY: TIOCSCTTY on our stdin, now the terminal's slave side.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(nix::Error::last());
    }
    Ok(master)
}

fn set_hostname(spec: &Spec) -> Result<(), InitError> {
    if let Some(name) = spec.hostname().as_deref().filter(|n| !n.is_empty()) {
        nix::unistd::sethostname(name).map_err(|source| InitError::Hostname {
            name: name.to_owned(),
            source,
        })?;
    }
    Ok(())
}

fn apply_sysctls(spec: &Spec) -> Result<(), InitError> {
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().clone());
    for (key, value) in sysctls.iter().flatten() {
        // Keys were checked (namespaced, no `/` or `..`) by the agent.
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| InitError::Sysctl {
            key: key.clone(),
            source,
        })?;
    }
    Ok(())
}
