//! A process's stdio as the agent holds it: pipes, or one pseudo-terminal
//! master for a terminal process. Reads and writes are async (non-blocking
//! fds under tokio's reactor) so a silent or stalled process never holds a
//! worker thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Mutex;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;
use tokio::io::unix::AsyncFd;

/// The child's ends, handed to `Command`.
pub struct ChildStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// The agent's ends.
pub struct AgentStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The terminal master, kept for resizing.
    pub terminal: Option<OwnedFd>,
}

/// Creates stdio for a process: pipes (stdin only when asked; /dev/null
/// else). A terminal process starts with /dev/null: its init allocates the
/// terminal inside the container and passes the master back
/// ([`terminal`]).
pub fn create(terminal: bool, stdin: bool) -> io::Result<(ChildStdio, AgentStdio)> {
    if terminal {
        let child = ChildStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        };
        let agent = AgentStdio {
            stdin: None,
            stdout: None,
            stderr: None,
            terminal: None,
        };
        return Ok((child, agent));
    }
    let (in_child, in_agent) = if stdin {
        let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
        (Stdio::from(r), Some(w))
    } else {
        (Stdio::null(), None)
    };
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
    Ok((
        ChildStdio {
            stdin: in_child,
            stdout: Stdio::from(out_w),
            stderr: Stdio::from(err_w),
        },
        AgentStdio {
            stdin: in_agent,
            stdout: Some(out_r),
            stderr: Some(err_r),
            terminal: None,
        },
    ))
}

/// The agent's side of a terminal: the master for input, output (one
/// merged stream) and resizing.
pub fn terminal(master: OwnedFd) -> io::Result<AgentStdio> {
    Ok(AgentStdio {
        stdin: Some(master.try_clone()?),
        stdout: Some(master.try_clone()?),
        stderr: None,
        terminal: Some(master),
    })
}

/// A non-blocking fd registered with tokio.
pub struct AsyncStream {
    fd: AsyncFd<OwnedFd>,
    /// A terminal master reports EIO once every slave is closed: that is
    /// its end of file.
    eio_is_eof: bool,
}

impl AsyncStream {
    pub fn new(fd: OwnedFd, eio_is_eof: bool) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
        // same fd until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, eio_is_eof })
    }

    /// Reads some bytes; 0 at end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if self.eio_is_eof && e.raw_os_error() == Some(libc::EIO) => {
                    return Ok(0)
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Sets a terminal's window size.
pub fn resize(master: &Mutex<Option<OwnedFd>>, rows: u16, cols: u16) -> io::Result<()> {
    let guard = master.lock().unwrap_or_else(|e| e.into_inner());
    let fd = guard
        .as_ref()
        .ok_or_else(|| io::Error::other("the process has no terminal"))?;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a valid fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
