//! Command line: where the agent serves its API.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;
use husk_proto::{AGENT_VSOCK_PORT, SHARED_DIR_GUEST_PATH};

/// `husk-agent [--listen vsock:PORT | unix:PATH] [--root DIR] [--shared-root DIR]`
#[derive(Debug, Parser)]
#[command(
    name = "husk-agent",
    version,
    about = "husk-agent: PID 1 of every husk microVM"
)]
pub struct Cli {
    /// Where to serve the agent API: `vsock:PORT` inside a VM, `unix:PATH`
    /// when running as an ordinary process (tests).
    #[arg(
        long,
        value_name = "vsock:PORT|unix:PATH",
        default_value_t = ListenAddr::Vsock(AGENT_VSOCK_PORT)
    )]
    pub listen: ListenAddr,
    /// The only folder ReadFile and WriteFile may touch. In a VM it is
    /// where the virtio-fs share is mounted; tests running the agent as an
    /// ordinary process point it at a scratch folder. Hidden: not a knob
    /// for production.
    #[arg(long, value_name = "DIR", default_value = SHARED_DIR_GUEST_PATH, hide = true)]
    pub shared_root: PathBuf,
    /// The agent's state folder: containers' writable layers and the
    /// sandbox's hosts, resolv.conf and hostname files.
    #[arg(long, value_name = "DIR", default_value = "/run/husk/agent")]
    pub root: PathBuf,
}

/// An address the agent can listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any local CID, this port.
    Vsock(u32),
    /// A unix stream socket at this path.
    Unix(PathBuf),
}

/// Why a `--listen` value was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenAddrError {
    #[error("expected vsock:PORT or unix:PATH, got {0:?}")]
    UnknownScheme(String),
    #[error("vsock port {0:?} is not a number from 1 to 4294967294")]
    BadPort(String),
    #[error("unix socket path is empty")]
    EmptyPath,
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("vsock:") {
            let bad = || ListenAddrError::BadPort(port.to_owned());
            let n: u32 = port.parse().map_err(|_| bad())?;
            // 0 is not a usable port and u32::MAX is VMADDR_PORT_ANY.
            if n == 0 || n == u32::MAX {
                return Err(bad());
            }
            Ok(Self::Vsock(n))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenAddrError::EmptyPath);
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else {
            Err(ListenAddrError::UnknownScheme(s.to_owned()))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock(port) => write!(f, "vsock:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vsock_port() {
        assert_eq!("vsock:1024".parse(), Ok(ListenAddr::Vsock(1024)));
        assert_eq!("vsock:1".parse(), Ok(ListenAddr::Vsock(1)));
    }

    #[test]
    fn parses_unix_path() {
        assert_eq!(
            "unix:/tmp/a b/agent.sock".parse(),
            Ok(ListenAddr::Unix("/tmp/a b/agent.sock".into()))
        );
    }

    #[test]
    fn rejects_bad_ports() {
        for bad in [
            "vsock:",
            "vsock:x",
            "vsock:-1",
            "vsock:0",
            "vsock:4294967295",
        ] {
            let port = bad.trim_start_matches("vsock:").to_owned();
            assert_eq!(
                bad.parse::<ListenAddr>(),
                Err(ListenAddrError::BadPort(port)),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_unknown_schemes_and_empty_paths() {
        assert_eq!(
            "tcp:1".parse::<ListenAddr>(),
            Err(ListenAddrError::UnknownScheme("tcp:1".into()))
        );
        assert_eq!(
            "1024".parse::<ListenAddr>(),
            Err(ListenAddrError::UnknownScheme("1024".into()))
        );
        assert_eq!(
            "unix:".parse::<ListenAddr>(),
            Err(ListenAddrError::EmptyPath)
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["vsock:1024", "unix:/run/agent.sock"] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn default_is_vsock_1024() {
        let cli = Cli::try_parse_from(["husk-agent"]).unwrap();
        assert_eq!(cli.listen, ListenAddr::Vsock(1024));
        assert_eq!(cli.shared_root, PathBuf::from("/run/husk/shared"));
    }

    #[test]
    fn shared_root_is_settable() {
        let cli = Cli::try_parse_from(["husk-agent", "--shared-root", "/tmp/s"]).unwrap();
        assert_eq!(cli.shared_root, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn clap_error_names_the_flag() {
        let err = Cli::try_parse_from(["husk-agent", "--listen", "tcp:1"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }
}
