//! Firecracker-style hybrid vsock, as husk-vmm exposes it: the host connects
//! to a unix socket, writes `CONNECT <port>\n`, and reads `OK <host port>\n`;
//! from then on the stream is connected to the guest's listener on that
//! vsock port. Until the guest listens, the VMM closes the stream instead
//! (the guest answered RST), so callers retry until a deadline.

use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest answer line we accept, newline included. `OK 4294967295\n` is 14
/// bytes; the bound keeps a confused peer from making us read forever.
pub const MAX_REPLY_BYTES: usize = 64;

/// Why the handshake failed. Converted to `io::Error` for the connector, so
/// the retry loop and its "last error" message see the reason.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("cannot connect to the VMM's vsock socket {uds}: {source}")]
    Connect {
        uds: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send CONNECT {port} to {uds}: {source}")]
    Send {
        uds: String,
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "{uds} closed the stream after CONNECT {port} without answering \
         (is the guest listening on vsock port {port} yet?)"
    )]
    Closed { uds: String, port: u32 },
    #[error("cannot read the answer to CONNECT {port} from {uds}: {source}")]
    Read {
        uds: String,
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("answer to CONNECT {port} from {uds} is longer than {MAX_REPLY_BYTES} bytes")]
    TooLong { uds: String, port: u32 },
    #[error("unexpected answer to CONNECT {port} from {uds}: {answer:?} (expected \"OK <port>\")")]
    Garbage {
        uds: String,
        port: u32,
        answer: String,
    },
}

impl From<HandshakeError> for io::Error {
    fn from(e: HandshakeError) -> io::Error {
        let kind = match &e {
            HandshakeError::Connect { source, .. }
            | HandshakeError::Send { source, .. }
            | HandshakeError::Read { source, .. } => source.kind(),
            HandshakeError::Closed { .. } => io::ErrorKind::ConnectionRefused,
            HandshakeError::TooLong { .. } | HandshakeError::Garbage { .. } => {
                io::ErrorKind::InvalidData
            }
        };
        io::Error::new(kind, e)
    }
}

/// Connects to the guest's vsock `port` through the VMM's socket `uds` and
/// returns the stream, positioned right after the `OK` line.
pub async fn dial(uds: &Path, port: u32) -> Result<UnixStream, HandshakeError> {
    let name = || uds.display().to_string();
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| HandshakeError::Connect {
            uds: name(),
            source,
        })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|source| HandshakeError::Send {
            uds: name(),
            port,
            source,
        })?;
    let line = read_line(&mut stream).await.map_err(|e| match e {
        LineError::Closed => HandshakeError::Closed { uds: name(), port },
        LineError::TooLong => HandshakeError::TooLong { uds: name(), port },
        // A reset is how some VMMs say "nobody listens" too.
        LineError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            HandshakeError::Closed { uds: name(), port }
        }
        LineError::Io(source) => HandshakeError::Read {
            uds: name(),
            port,
            source,
        },
    })?;
    if parse_ok(&line).is_none() {
        return Err(HandshakeError::Garbage {
            uds: name(),
            port,
            answer: line,
        });
    }
    Ok(stream)
}

/// `OK <u32>` → the host-side port the VMM assigned (unused beyond checking).
fn parse_ok(line: &str) -> Option<u32> {
    line.strip_prefix("OK ")?.parse().ok()
}

enum LineError {
    Closed,
    TooLong,
    Io(io::Error),
}

/// Reads one `\n`-terminated line (newline stripped), one byte at a time so
/// no byte of the guest's stream that may follow is consumed. At most
/// [`MAX_REPLY_BYTES`] bytes: a handful of syscalls once per connection.
async fn read_line(stream: &mut UnixStream) -> Result<String, LineError> {
    let mut line = Vec::with_capacity(16);
    loop {
        if line.len() >= MAX_REPLY_BYTES {
            return Err(LineError::TooLong);
        }
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(0) => return Err(LineError::Closed),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LineError::Io(e)),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::net::UnixListener;

    /// A scratch folder holding one socket path, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("husk-hvsock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("vsock.sock")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fake VMM that reads the request line on one connection, checks it,
    /// then writes `answer` and closes (an empty answer just closes).
    fn fake_vmm(path: &Path, answer: &'static [u8]) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
                request.push(b[0]);
            }
            s.write_all(answer).await.unwrap();
            String::from_utf8(request).unwrap()
        })
    }

    #[tokio::test]
    async fn ok_hands_over_the_stream_without_eating_guest_bytes() {
        let scratch = Scratch::new("ok");
        let vmm = fake_vmm(&scratch.socket(), b"OK 1073741824\nguest-bytes");
        let mut stream = dial(&scratch.socket(), 1024).await.unwrap();
        assert_eq!(vmm.await.unwrap(), "CONNECT 1024");
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "guest-bytes");
    }

    #[tokio::test]
    async fn a_closed_stream_says_the_guest_may_not_listen_yet() {
        let scratch = Scratch::new("closed");
        let _vmm = fake_vmm(&scratch.socket(), b"");
        let err = dial(&scratch.socket(), 1024).await.unwrap_err();
        assert!(
            matches!(err, HandshakeError::Closed { port: 1024, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("vsock.sock"), "{text}");
        assert_eq!(
            io::Error::from(err).kind(),
            io::ErrorKind::ConnectionRefused
        );
    }

    #[tokio::test]
    async fn garbage_is_refused_and_quoted() {
        let scratch = Scratch::new("garbage");
        let _vmm = fake_vmm(&scratch.socket(), b"HELLO there\n");
        let err = dial(&scratch.socket(), 1024).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"HELLO there\""), "{text}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn ok_without_a_port_is_garbage_too() {
        let scratch = Scratch::new("okjunk");
        let _vmm = fake_vmm(&scratch.socket(), b"OK\n");
        let err = dial(&scratch.socket(), 7).await.unwrap_err();
        assert!(
            matches!(err, HandshakeError::Garbage { port: 7, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_at_the_bound() {
        let scratch = Scratch::new("long");
        let _vmm = fake_vmm(&scratch.socket(), &[b'O'; 4096]);
        let err = dial(&scratch.socket(), 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::TooLong { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_socket_names_its_path() {
        let scratch = Scratch::new("missing");
        let err = dial(&scratch.socket(), 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("vsock.sock"), "{err}");
    }

    #[test]
    fn parses_only_ok_with_a_port() {
        assert_eq!(parse_ok("OK 52"), Some(52));
        assert_eq!(parse_ok("OK 4294967295"), Some(u32::MAX));
        for bad in ["OK", "OK ", "ok 5", "OK -1", "OK 5 6", "FAIL 5"] {
            assert_eq!(parse_ok(bad), None, "{bad}");
        }
    }
}
