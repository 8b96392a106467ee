//! The host side of a hybrid-vsock connection starts with one text line,
//! `CONNECT <port>\n`. A host client is not trusted to behave either: the
//! line is bounded, and a client that does not finish it quickly, or within
//! a few wake-ups, is dropped so it cannot pin a slot forever.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Longest accepted line, newline included (`CONNECT 4294967295\n` is 19).
pub const MAX_LINE: usize = 32;
/// How long a client may take to send its line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How many readiness events a client gets to complete its line.
pub const MAX_ATTEMPTS: u32 = 16;

/// Why a CONNECT line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("line does not start with \"CONNECT \"")]
    NoConnect,
    #[error("port is not a decimal u32")]
    BadPort,
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("peer closed before sending a full line")]
    Eof,
    #[error("no full line after {MAX_ATTEMPTS} reads")]
    TooManyAttempts,
    #[error("reading the line failed: {0}")]
    Io(io::ErrorKind),
}

/// Parses one line (without its `\n`) into the requested guest port.
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let rest = line
        .strip_prefix(b"CONNECT ")
        .ok_or(HandshakeError::NoConnect)?;
    // Tolerate a CRLF client, nothing else.
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::BadPort);
    }
    std::str::from_utf8(rest)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or(HandshakeError::BadPort)
}

/// A host client that connected to the UDS but has not finished its line.
#[derive(Debug)]
pub struct PendingHandshake {
    pub stream: UnixStream,
    buf: [u8; MAX_LINE],
    len: usize,
    attempts: u32,
    pub deadline: Instant,
}

impl PendingHandshake {
    pub fn new(stream: UnixStream, now: Instant) -> Self {
        Self {
            stream,
            buf: [0; MAX_LINE],
            len: 0,
            attempts: 0,
            deadline: now + HANDSHAKE_TIMEOUT,
        }
    }

    /// Reads what is available. `Ok(Some(port))` once the line is complete,
    /// `Ok(None)` if more is needed. Reads one byte at a time so bytes the
    /// client pipelines after its line stay in the socket for the guest.
    pub fn advance(&mut self) -> Result<Option<u32>, HandshakeError> {
        self.attempts += 1;
        loop {
            if self.len == MAX_LINE {
                return Err(HandshakeError::TooLong);
            }
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(HandshakeError::Eof),
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.buf[..self.len]).map(Some),
                Ok(_) => {
                    self.buf[self.len] = byte[0];
                    self.len += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if self.attempts >= MAX_ATTEMPTS {
                        Err(HandshakeError::TooManyAttempts)
                    } else {
                        Ok(None)
                    };
                }
                Err(e) => return Err(HandshakeError::Io(e.kind())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parses_only_well_formed_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Ok(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT abc"), Err(HandshakeError::BadPort));
        assert_eq!(parse_connect(b"CONNECT "), Err(HandshakeError::BadPort));
        assert_eq!(parse_connect(b"CONNECT +5"), Err(HandshakeError::BadPort));
        assert_eq!(
            parse_connect(b"CONNECT 4294967296"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(parse_connect(b"connect 5"), Err(HandshakeError::NoConnect));
        assert_eq!(parse_connect(b"CONNECT  5"), Err(HandshakeError::BadPort));
    }

    #[test]
    fn reads_line_incrementally_and_leaves_pipelined_bytes() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut hs = PendingHandshake::new(server, Instant::now());
        client.write_all(b"CONN").unwrap();
        assert_eq!(hs.advance(), Ok(None));
        client.write_all(b"ECT 7\nhello").unwrap();
        assert_eq!(hs.advance(), Ok(Some(7)));
        let mut rest = [0u8; 5];
        hs.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn rejects_long_lines_and_eof() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut hs = PendingHandshake::new(server, Instant::now());
        client.write_all(&[b'7'; 40]).unwrap();
        assert_eq!(hs.advance(), Err(HandshakeError::TooLong));

        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut hs = PendingHandshake::new(server, Instant::now());
        drop(client);
        assert_eq!(hs.advance(), Err(HandshakeError::Eof));
    }
}
