//! Binds the socket the agent API is served on: AF_VSOCK inside a VM, a
//! unix socket when the agent runs as an ordinary process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

use crate::cli::ListenAddr;

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` from `<linux/vm_sockets.h>`, `_IO(7, 0xb9)`
/// (not exported by the libc crate).
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;
/// CIDs below 3 are reserved: 0 hypervisor, 1 local loopback, 2 host.
const FIRST_GUEST_CID: u32 = 3;

/// A bound, listening socket.
pub enum Listener {
    Vsock(VsockListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

/// Why the agent could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen on AF_VSOCK port {port} (is there a vsock device and transport?): {source}"
    )]
    Vsock {
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove stale socket {}: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on unix socket {}: {source}", path.display())]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds `addr`. Needs the tokio runtime (the socket joins its reactor).
pub fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
    match addr {
        ListenAddr::Vsock(port) => bind_vsock(*port),
        ListenAddr::Unix(path) => bind_unix(path),
    }
}

fn bind_vsock(port: u32) -> Result<Listener, ListenError> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .map_err(|source| ListenError::Vsock { port, source })?;
    // Since Linux 5.5 a listening vsock socket binds fine without any
    // transport, so a VM without a vsock device would wait forever in
    // silence. Say so on the console; the host's connect deadline decides.
    match local_vsock_cid() {
        Ok(cid) if cid >= FIRST_GUEST_CID && cid != VMADDR_CID_ANY => {}
        Ok(cid) => eprintln!(
            "husk-agent: warning: no guest vsock transport (local CID {cid}); the host cannot reach this agent"
        ),
        Err(e) => eprintln!("husk-agent: warning: cannot read the local vsock CID: {e}"),
    }
    Ok(Listener::Vsock(listener))
}

fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    // A socket file left by an earlier run makes bind fail with EADDRINUSE.
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_socket())
    {
        std::fs::remove_file(path).map_err(|source| ListenError::RemoveStale {
            path: path.to_owned(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| ListenError::Unix {
        path: path.to_owned(),
        source,
    })?;
    Ok(Listener::Unix {
        listener,
        path: path.to_owned(),
    })
}

/// The guest's own vsock CID as the kernel sees it.
fn local_vsock_cid() -> io::Result<u32> {
    let dev = File::open("/dev/vsock")?;
    let mut cid: u32 = 0;
    // SAFETY: the ioctl writes one u32 through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_bind_replaces_a_stale_socket_but_not_a_file() {
        let dir = std::env::temp_dir().join(format!("husk-agent-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");

        drop(bind_unix(&sock).unwrap());
        assert!(sock.exists(), "socket file should remain after drop");
        // Stale socket from the first bind: replaced.
        drop(bind_unix(&sock).unwrap());

        let file = dir.join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind_unix(&file), Err(ListenError::Unix { .. })));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
