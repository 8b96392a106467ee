//! The status channel (fd 4): a unix stream socket rather than a pipe, so
//! the `ok` of a terminal process can carry the terminal's master fd, which
//! the init allocates inside the container's own devpts.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Longest status line the agent reads; an init saying more is broken.
const MAX_LINE: usize = 64 * 1024;

/// Sends `ok`, with `fd` attached when there is one.
pub fn send_ok(sock: RawFd, fd: Option<RawFd>) -> io::Result<()> {
    let data = [IoSlice::new(b"ok\n")];
    let fds = fd.map(|f| [f]);
    let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    sendmsg::<()>(sock, &data, &cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// The agent's end.
pub struct StatusReader {
    sock: OwnedFd,
    buf: Vec<u8>,
}

/// One line from the init, with any fds it passed.
pub struct StatusLine {
    pub line: String,
    pub fds: Vec<OwnedFd>,
}

impl StatusReader {
    pub fn new(sock: OwnedFd) -> Self {
        Self {
            sock,
            buf: Vec::new(),
        }
    }

    /// Reads up to a newline; Ok(None) at end of file before any byte,
    /// Err(TimedOut) after `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> io::Result<Option<StatusLine>> {
        let deadline = Instant::now() + timeout;
        let mut fds = Vec::new();
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Some(StatusLine {
                    line: String::from_utf8_lossy(&line).into_owned(),
                    fds,
                }));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::other("status line too long"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let pfd = PollFd::new(std::os::fd::AsFd::as_fd(&self.sock), PollFlags::POLLIN);
            let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            if poll(&mut [pfd], ms)? == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "status timed out"));
            }
            let mut chunk = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 4]);
            let (n, received) = {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let msg = recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )?;
                let mut received = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        received.extend(raw);
                    }
                }
                (msg.bytes, received)
            };
            // SAFETY: SCM_RIGHTS just installed these fds in our table.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(StatusLine {
                        line: String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned(),
                        fds,
                    }))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
