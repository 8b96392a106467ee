//! The build cache lives outside the clone so CI and later runs reuse it.
//! Entries are folders named by a content hash of everything that went in.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Root of husk's cache: `$HUSK_CACHE_DIR`, else `$HOME/.cache/husk`.
pub fn root() -> PathBuf {
    husk_tests::cache_root()
}

/// Hashes a list of labelled inputs into a short stable key.
pub fn key(parts: &[(&str, &[u8])]) -> String {
    let mut hasher = Sha256::new();
    for (label, bytes) in parts {
        hasher.update((label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let digest = hasher.finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// `<root>/<kind>/<key>`: where an entry with this key lives.
pub fn entry(kind: &str, key: &str) -> PathBuf {
    root().join(kind).join(key)
}

/// Writes `path` atomically: a partial file never looks complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
