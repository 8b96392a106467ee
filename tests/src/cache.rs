//! husk's build cache lives outside any clone so CI and later runs reuse it.
//! Entries are folders named by a content hash of everything that went in.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Root of the cache: `$HUSK_CACHE_DIR`, else `$HOME/.cache/husk`.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUSK_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("husk")
}

/// Hashes labelled inputs into a short stable key (labels and lengths are
/// hashed too, so no two different input lists collide by concatenation).
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
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_labels_values_and_boundaries() {
        let a = key(&[("x", b"ab"), ("y", b"c")]);
        assert_eq!(a, key(&[("x", b"ab"), ("y", b"c")]));
        assert_ne!(a, key(&[("x", b"a"), ("y", b"bc")]));
        assert_ne!(a, key(&[("z", b"ab"), ("y", b"c")]));
        assert_eq!(a.len(), 24);
    }
}
