//! Container output → the CRI log files kubelet reads.
//!
//! Each file holds records of the form
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>\n`: `F` ends a
//! line (its `\n` is not repeated in the text), `P` is a piece of a line
//! the next record of the same stream continues. kubelet (`kubectl logs`)
//! joins the pieces back.

mod path;
mod timestamp;
mod writer;

pub use path::{validate_log_path, LogPathError};
pub use timestamp::format_timestamp;
pub use writer::{LogWriter, MAX_LINE};

/// Which output of the container a piece of data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name the CRI log format uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
