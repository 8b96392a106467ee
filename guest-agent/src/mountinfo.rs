//! `/proc/*/mountinfo`, parsed by hand: one line of space-separated fields
//! per mount (proc(5)), which no crate is needed for. Shared by PID 1's
//! unmount at power-off, the container rootfs switch and cgroup discovery.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The fields of one mount husk uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 4: the path inside its filesystem this mount shows.
    pub root: PathBuf,
    /// Field 5: where it is mounted.
    pub mount_point: PathBuf,
    /// The first field after the lone `-`.
    pub fstype: String,
    /// The third field after the `-`: the superblock's options.
    pub super_options: String,
}

/// Every well-formed line of `text`, in mount order.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let dash = fields.iter().position(|f| *f == b"-")?;
            Some(MountEntry {
                root: PathBuf::from(unescape(fields.get(3)?)),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: String::from_utf8_lossy(fields.get(dash + 1)?).into_owned(),
                super_options: String::from_utf8_lossy(fields.get(dash + 3)?).into_owned(),
            })
        })
        .collect()
}

/// Reads and parses a mountinfo file.
pub fn read(path: &str) -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read(path)?))
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and `\`.
fn unescape(field: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_escapes() {
        let text = b"22 1 0:20 / / rw - rootfs rootfs rw\n\
            36 22 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext4 /dev/root rw,errors=remount-ro\n\
            37 22 0:5 /x\\011y /a\\134b rw - tmpfs tmpfs rw\n\
            38 22 0:6 / /bad rw no-dash-here\n";
        let got = parse(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].mount_point, PathBuf::from("/"));
        assert_eq!(got[0].fstype, "rootfs");
        assert_eq!(got[1].root, PathBuf::from("/mnt1"));
        assert_eq!(got[1].mount_point, PathBuf::from("/mnt two"));
        assert_eq!(got[1].fstype, "ext4");
        assert_eq!(got[1].super_options, "rw,errors=remount-ro");
        assert_eq!(got[2].root, PathBuf::from("/x\ty"));
        assert_eq!(got[2].mount_point, PathBuf::from("/a\\b"));
    }

    #[test]
    fn a_lone_backslash_is_kept() {
        let got = parse(b"1 1 0:1 / /a\\9z rw - tmpfs t rw\n");
        assert_eq!(got[0].mount_point, PathBuf::from("/a\\9z"));
    }
}
