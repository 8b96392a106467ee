//! Unpacks one image layer into its own folder, which the guest later
//! stacks as an overlayfs lower layer (over virtio-fs).
//!
//! The archive is untrusted input. Nothing is ever written outside the
//! layer folder: paths are normalized lexically ([`path`]), parents are
//! opened one component at a time with O_NOFOLLOW ([`fsops`]), hard links
//! must name earlier entries, device nodes are skipped, and the
//! uncompressed stream is bounded and must hash to the config's diff-id.

mod compression;
mod fsops;
mod meta;
mod path;
mod writer;

use std::cell::Cell;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub use self::compression::Compression;
pub use self::fsops::WalkError;
pub use self::path::PathError;
use self::writer::Writer;
use super::digest::Digest;

/// The largest uncompressed layer we unpack: a bound on what a hostile
/// registry can make us write.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 16 << 30;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {entry:?}: {source}")]
    Path {
        entry: String,
        #[source]
        source: PathError,
    },
    #[error("entry {entry}: {source}")]
    Walk {
        entry: String,
        #[source]
        source: WalkError,
    },
    #[error("link {entry}: {reason}")]
    BadLink { entry: String, reason: String },
    #[error("entry {0} names the layer root but is not a folder")]
    RootEntry(String),
    #[error("uncompressed layer is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("uncompressed layer hashes to {actual}, but the image config says {expected}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("bad archive: {0}")]
    Archive(#[source] io::Error),
    #[error("cannot {op} {entry}: {source}")]
    Fs {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// Whether the failure is this node's (disk, permissions) rather than
    /// the layer's content.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            UnpackError::Fs { .. }
                | UnpackError::Walk {
                    source: WalkError::Io { .. },
                    ..
                }
        )
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub compression: Compression,
    /// Uncompressed bytes, tar padding included.
    pub bytes: u64,
    pub entries: u64,
}

/// Unpacks the (possibly compressed) layer `blob` into the empty folder
/// `dest`, checking that the uncompressed stream hashes to `diff_id` and
/// holds at most `max_bytes`. On error `dest` holds a partial tree the
/// caller must remove.
pub fn unpack_layer(
    blob: impl Read,
    dest: &Path,
    diff_id: &Digest,
    max_bytes: u64,
) -> Result<Unpacked, UnpackError> {
    let root = std::fs::File::open(dest).map_err(|source| UnpackError::Fs {
        entry: dest.display().to_string(),
        op: "open",
        source,
    })?;
    let (compression, stream) = compression::decompress(blob).map_err(UnpackError::Archive)?;
    let exceeded = Cell::new(false);
    let mut measured = Measured {
        inner: stream,
        hasher: Sha256::new(),
        bytes: 0,
        limit: max_bytes,
        exceeded: &exceeded,
    };
    let too_large = |e: UnpackError| {
        if exceeded.get() {
            UnpackError::TooLarge { limit: max_bytes }
        } else {
            e
        }
    };
    let mut writer = Writer::new(root.into());
    {
        let mut archive = tar::Archive::new(&mut measured);
        let entries = archive.entries().map_err(UnpackError::Archive)?;
        for entry in entries {
            let mut entry = entry.map_err(|e| too_large(UnpackError::Archive(e)))?;
            writer.add(&mut entry).map_err(too_large)?;
        }
    }
    // The diff-id covers the whole stream, padding after the end marker
    // included.
    io::copy(&mut measured, &mut io::sink()).map_err(|e| too_large(UnpackError::Archive(e)))?;
    let entries = writer.finish()?;
    let actual = Digest::from_hasher(measured.hasher);
    if actual != *diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(Unpacked {
        compression,
        bytes: measured.bytes,
        entries,
    })
}

/// Hashes and counts the uncompressed stream, failing past the limit.
struct Measured<'a, R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
    exceeded: &'a Cell<bool>,
}

impl<R: Read> Read for Measured<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            self.exceeded.set(true);
            return Err(io::Error::other("layer exceeds the size limit"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
