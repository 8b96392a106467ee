//! How the host reaches an agent: one `dial` per kind of address, all
//! yielding a boxed byte stream that tonic speaks HTTP/2 over.
//!
//! The Firecracker-style hybrid vsock that husk-vmm exposes (a unix socket:
//! write `CONNECT <port>\n`, read `OK <host port>\n`, then the stream is the
//! guest's) lives in [`hybrid`].

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockStream};
use tonic::transport::Uri;

use super::hybrid;

/// Where an agent listens, as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// AF_VSOCK through the kernel's vhost-vsock (`cid` is the guest's).
    Vsock { cid: u32, port: u32 },
    /// A unix socket the agent listens on directly (agent outside a VM).
    Unix(PathBuf),
    /// The VMM's hybrid vsock: the unix socket `uds` that husk-vmm (like
    /// Firecracker) forwards to the guest's vsock `port` after a
    /// `CONNECT`/`OK` handshake. No vhost-vsock needed on the host.
    HybridVsock { uds: PathBuf, port: u32 },
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::HybridVsock { uds, port } => write!(f, "hvsock:{}:{port}", uds.display()),
        }
    }
}

/// A connected byte stream of any transport.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens one connection to `addr`.
pub async fn dial(addr: &AgentAddr) -> io::Result<Box<dyn Io>> {
    Ok(match addr {
        AgentAddr::Vsock { cid, port } => {
            Box::new(VsockStream::connect(VsockAddr::new(*cid, *port)).await?)
        }
        AgentAddr::Unix(path) => Box::new(UnixStream::connect(path).await?),
        AgentAddr::HybridVsock { uds, port } => Box::new(hybrid::dial(uds, *port).await?),
    })
}

/// The tower service tonic's channel calls on every (re)connect; it ignores
/// the URI and dials the agent address.
#[derive(Debug, Clone)]
pub struct Connector {
    addr: AgentAddr,
}

impl Connector {
    pub fn new(addr: AgentAddr) -> Self {
        Self { addr }
    }
}

type Dialing = Pin<Box<dyn Future<Output = io::Result<TokioIo<Box<dyn Io>>>> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = Dialing;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.addr.clone();
        Box::pin(async move { dial(&addr).await.map(TokioIo::new) })
    }
}
