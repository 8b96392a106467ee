//! Points stdin/stdout/stderr at /dev/console, where the host reads the ready
//! line and any fatal error (the serial port the VMM logs).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};

/// Why the console could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot open /dev/console: {0}")]
    Open(#[source] io::Error),
    #[error("cannot redirect stdio to /dev/console: {0}")]
    Dup(#[source] nix::Error),
}

/// Makes fds 0, 1 and 2 the console. The kernel normally opened them for us
/// from the initramfs' /dev/console node; this repairs a start without it.
pub fn attach() -> Result<(), ConsoleError> {
    let console = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
    {
        Ok(console) => console,
        // Started by something else that already gave us output (e.g. a
        // container runtime with no console): keep what we have.
        Err(_) if stdout_is_open() => return Ok(()),
        Err(e) => return Err(ConsoleError::Open(e)),
    };
    dup2_stdin(&console).map_err(ConsoleError::Dup)?;
    dup2_stdout(&console).map_err(ConsoleError::Dup)?;
    dup2_stderr(&console).map_err(ConsoleError::Dup)?;
    Ok(())
}

fn stdout_is_open() -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) >= 0 }
}
