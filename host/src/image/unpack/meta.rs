//! An entry's metadata: the ustar header, overridden by PAX records (which
//! carry large ids, sub-second times and extended attributes).

use std::ffi::CString;
use std::io::{self, Read};

/// PAX records naming an extended attribute.
const PAX_XATTR: &str = "SCHILY.xattr.";

/// Namespaces an image may not set: `security.*` (SELinux labels, file
/// capabilities) and `trusted.*` (overlayfs' own markers, which only the
/// whiteout conversion writes) are the host's business, not the image's.
const DROPPED_XATTRS: [&str; 2] = ["security.", "trusted."];

/// What the unpacker applies to an entry besides its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: i64,
    pub xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    /// Reads the metadata of `entry`; errors name a field that does not
    /// parse.
    pub fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let header = entry.header();
        let mut meta = Meta {
            mode: header.mode()? & 0o7777,
            uid: id(header.uid()?)?,
            gid: id(header.gid()?)?,
            mtime_secs: i64::try_from(header.mtime()?).unwrap_or(i64::MAX),
            mtime_nanos: 0,
            xattrs: Vec::new(),
        };
        let Some(pax) = entry.pax_extensions()? else {
            return Ok(meta);
        };
        for ext in pax {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            match key {
                "uid" => meta.uid = id(number(value)?)?,
                "gid" => meta.gid = id(number(value)?)?,
                "mtime" => (meta.mtime_secs, meta.mtime_nanos) = time(value)?,
                _ => {
                    if let Some(name) = key.strip_prefix(PAX_XATTR) {
                        if DROPPED_XATTRS.iter().any(|p| name.starts_with(p)) {
                            tracing::debug!(xattr = name, "dropping an image-supplied xattr");
                            continue;
                        }
                        let name = CString::new(name).map_err(|_| bad("xattr name"))?;
                        meta.xattrs.push((name, value.to_vec()));
                    }
                }
            }
        }
        Ok(meta)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad {what} in tar header"),
    )
}

fn id(v: u64) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| bad("uid/gid"))
}

fn number(v: &[u8]) -> io::Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| bad("PAX number"))
}

/// A PAX time, `secs[.fraction]`; negative times clamp to the epoch.
fn time(v: &[u8]) -> io::Result<(i64, i64)> {
    let s = std::str::from_utf8(v).map_err(|_| bad("PAX mtime"))?.trim();
    if s.starts_with('-') {
        return Ok((0, 0));
    }
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().map_err(|_| bad("PAX mtime"))?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("PAX mtime"));
    }
    let nanos = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}")
            .parse()
            .map_err(|_| bad("PAX mtime"))?
    };
    Ok((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pax_times() {
        assert_eq!(time(b"1700000000").unwrap(), (1_700_000_000, 0));
        assert_eq!(time(b"1700000000.5").unwrap(), (1_700_000_000, 500_000_000));
        assert_eq!(time(b"-5.2").unwrap(), (0, 0));
        assert!(time(b"x").is_err());
    }
}
