//! Ids: 64 random hex digits, like other CRI runtimes, and lookup by full
//! id or unique prefix (what `crictl` users type).

use std::io::Read;

use super::error::{Result, RuntimeError};

pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one id in `ids` equal to `wanted` or starting with it.
pub fn resolve_id<'a>(
    ids: impl Iterator<Item = &'a String>,
    wanted: &str,
    what: &'static str,
) -> Result<String> {
    if wanted.is_empty() {
        return Err(RuntimeError::invalid(format!("{what} id"), "is empty"));
    }
    let mut found: Option<&String> = None;
    for id in ids {
        if id == wanted {
            return Ok(id.clone());
        }
        if id.starts_with(wanted) {
            if found.is_some() {
                return Err(RuntimeError::AmbiguousId {
                    kind: what,
                    prefix: wanted.to_owned(),
                });
            }
            found = Some(id);
        }
    }
    found.cloned().ok_or_else(|| RuntimeError::NotFound {
        kind: what,
        id: wanted.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex_and_prefixes_resolve() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        let ids = ["abc1".to_string(), "abd2".to_string()];
        assert_eq!(resolve_id(ids.iter(), "abc", "pod").unwrap(), "abc1");
        assert_eq!(resolve_id(ids.iter(), "abd2", "pod").unwrap(), "abd2");
        let e = resolve_id(ids.iter(), "ab", "pod").unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
        let e = resolve_id(ids.iter(), "zz", "pod").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = resolve_id(ids.iter(), "", "pod").unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidArgument { .. }), "{e}");
    }
}
