//! Layer entry paths, normalized lexically before anything touches the
//! disk: the archive is untrusted, so `..` must never climb out of the
//! layer and an absolute name is taken relative to the layer's root.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

/// Longest entry path (or symlink target) we accept: Linux's PATH_MAX.
pub const MAX_PATH: usize = 4096;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} climbs out of the layer")]
    Escapes(String),
    #[error("path of {0} bytes is longer than {MAX_PATH}")]
    TooLong(usize),
    #[error("path {0:?} holds a NUL byte")]
    Nul(String),
}

/// A path inside the layer as its normal components; empty is the layer's
/// root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPath(Vec<CString>);

impl LayerPath {
    /// Normalizes a raw archive name: strips leading `/` and `./`, drops
    /// `.` and empty components, resolves `..` lexically and refuses one
    /// that would leave the root. Lexical resolution is right here because
    /// the unpacker never follows symlinks, so `a/..` is always `.`.
    pub fn parse(raw: &[u8]) -> Result<LayerPath, PathError> {
        let show = || String::from_utf8_lossy(raw).into_owned();
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong(raw.len()));
        }
        if raw.contains(&0) {
            return Err(PathError::Nul(show()));
        }
        let mut parts: Vec<CString> = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        return Err(PathError::Escapes(show()));
                    }
                }
                name => parts.push(CString::new(name).map_err(|_| PathError::Nul(show()))?),
            }
        }
        Ok(LayerPath(parts))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent's components and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(&[CString], &CString)> {
        let (last, parents) = self.0.split_last()?;
        Some((parents, last))
    }

    pub fn components(&self) -> &[CString] {
        &self.0
    }

    /// The last component, as text (for whiteout names).
    pub fn file_name(&self) -> Option<&OsStr> {
        self.0.last().map(|c| OsStr::from_bytes(c.as_bytes()))
    }

    /// A path to the same place with another last name (whiteouts name the
    /// entry they hide).
    pub fn with_file_name(&self, name: &[u8]) -> Result<LayerPath, PathError> {
        let mut parts = self.0.clone();
        parts.pop();
        let mut raw = Vec::new();
        for p in &parts {
            raw.extend_from_slice(p.as_bytes());
            raw.push(b'/');
        }
        raw.extend_from_slice(name);
        // Re-parse so a name like `..` is judged like any other.
        let parsed = LayerPath::parse(&raw)?;
        if parsed.0.len() != parts.len() + 1 {
            return Err(PathError::Escapes(
                String::from_utf8_lossy(&raw).into_owned(),
            ));
        }
        Ok(parsed)
    }
}

impl std::fmt::Display for LayerPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("/")?;
        let names: Vec<_> = self.0.iter().map(|c| c.to_string_lossy()).collect();
        f.write_str(&names.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Vec<String> {
        LayerPath::parse(raw.as_bytes())
            .unwrap()
            .components()
            .iter()
            .map(|c| c.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn strips_leading_slash_and_dot() {
        assert_eq!(parts("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(parts("./etc//x/"), ["etc", "x"]);
        assert_eq!(parts("a/./b/../c"), ["a", "c"]);
        assert!(LayerPath::parse(b"./").unwrap().is_root());
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["..", "../x", "a/../../x", "/../etc/x", "./../../etc/x"] {
            assert!(
                matches!(LayerPath::parse(bad.as_bytes()), Err(PathError::Escapes(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_long_paths_and_whiteout_tricks() {
        let long = "a/".repeat(MAX_PATH);
        assert!(matches!(
            LayerPath::parse(long.as_bytes()),
            Err(PathError::TooLong(_))
        ));
        let p = LayerPath::parse(b"dir/.wh.x").unwrap();
        assert!(p.with_file_name(b"..").is_err());
        assert!(p.with_file_name(b".").is_err());
        assert_eq!(p.with_file_name(b"x").unwrap().to_string(), "/dir/x");
    }
}
