//! How much of a VMM's resident memory is the guest's own RAM, so boot
//! benchmarks can report the VMM's *overhead*: peak RSS minus the guest
//! memory the guest touched.
//!
//! The guest's RAM is the VMM's largest writable anonymous mapping at least
//! as large as the configured memory size. Anonymous means no backing file
//! (also a `[anon:name]` mapping, a memfd, which a VMM sharing its memory
//! with a device process would use, or shared anonymous memory, which the
//! kernel shows as `/dev/zero (deleted)`). QEMU's may be slightly larger than
//! `-m` (alignment); its guard pages are separate `---p` mappings. glibc's
//! malloc arenas reserve 64 MiB but only their small writable head is `rw`,
//! so they do not compete. Its `Rss:` is what the guest touched so far.

use std::path::Path;

/// Why guest memory could not be accounted.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no writable anonymous mapping of at least {want_kib} KiB in {path}; \
         cannot tell the guest's RAM apart (largest anonymous: {largest_kib} KiB)"
    )]
    NotFound {
        path: String,
        want_kib: u64,
        largest_kib: u64,
    },
}

/// One mapping of `/proc/PID/smaps`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub perms: String,
    /// Empty for an anonymous mapping.
    pub path: String,
    pub size_kib: u64,
    pub rss_kib: u64,
}

impl Mapping {
    /// Not backed by a file of its own (see the module docs).
    pub fn is_anonymous(&self) -> bool {
        self.path.is_empty()
            || self.path.starts_with("[anon:")
            || self.path.starts_with("/memfd:")
            || self.path == "/dev/zero (deleted)"
    }
}

/// Parses the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if is_range(first) {
            let perms = fields.next().unwrap_or_default().to_owned();
            // offset, dev, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            maps.push(Mapping {
                perms,
                path,
                size_kib: 0,
                rss_kib: 0,
            });
            continue;
        }
        let Some(last) = maps.last_mut() else {
            continue;
        };
        let value = || {
            fields
                .clone()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => last.size_kib = value(),
            "Rss:" => last.rss_kib = value(),
            _ => {}
        }
    }
    maps
}

/// `start-end` in hex: the first field of a mapping's header line.
fn is_range(field: &str) -> bool {
    field.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.chars().all(|c| c.is_ascii_hexdigit())
            && b.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// The guest-RAM mapping among `maps` for a guest of `memory_kib`.
pub fn guest_ram(maps: &[Mapping], memory_kib: u64) -> Option<&Mapping> {
    maps.iter()
        .filter(|m| m.is_anonymous() && m.perms.starts_with("rw") && m.size_kib >= memory_kib)
        .max_by_key(|m| m.size_kib)
}

/// KiB of guest RAM resident in process `pid` whose guest has `memory_mib`.
pub fn guest_touched_kib(pid: u32, memory_mib: u32) -> Result<u64, GuestMemoryError> {
    let path = format!("/proc/{pid}/smaps");
    let text =
        std::fs::read_to_string(Path::new(&path)).map_err(|source| GuestMemoryError::Read {
            path: path.clone(),
            source,
        })?;
    let maps = parse_smaps(&text);
    let want_kib = u64::from(memory_mib) * 1024;
    match guest_ram(&maps, want_kib) {
        Some(m) => Ok(m.rss_kib),
        None => Err(GuestMemoryError::NotFound {
            path,
            want_kib,
            largest_kib: maps
                .iter()
                .filter(|m| m.is_anonymous())
                .map(|m| m.size_kib)
                .max()
                .unwrap_or(0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/qemu system
Size:               1024 kB
Rss:                 900 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                  12 kB
7f1000000000-7f1010200000 rw-p 00000000 00:00 0 
Size:             264192 kB
KernelPageSize:        4 kB
Rss:               40960 kB
VmFlags: rd wr mr mw me ac sd
7f2000000000-7f2020000000 ---p 00000000 00:00 0
Size:             524288 kB
Rss:                   0 kB
7f3000000000-7f3010000000 rw-s 00000000 00:01 77 /memfd:guest (deleted)
Size:             262144 kB
Rss:                2048 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Size:                132 kB
Rss:                  20 kB
";

    #[test]
    fn parses_headers_paths_and_sizes() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[0].path, "/usr/bin/qemu system");
        assert_eq!((maps[0].size_kib, maps[0].rss_kib), (1024, 900));
        assert!(!maps[0].is_anonymous());
        assert!(maps[1].is_anonymous() && maps[2].is_anonymous());
        assert!(maps[4].is_anonymous(), "memfd");
        assert!(!maps[5].is_anonymous(), "[stack]");
    }

    #[test]
    fn picks_the_largest_writable_anonymous_mapping_big_enough() {
        let maps = parse_smaps(SMAPS);
        // 256 MiB guest: the 258 MiB rw mapping wins over the 256 MiB memfd
        // (largest first); the 512 MiB PROT_NONE reservation never counts.
        assert_eq!(guest_ram(&maps, 256 * 1024).unwrap().rss_kib, 40960);
        // A 64 MiB guest must not be confused with the 64 MiB arena either:
        // the largest qualifying mapping wins.
        assert_eq!(guest_ram(&maps, 64 * 1024).unwrap().rss_kib, 40960);
        assert_eq!(guest_ram(&maps, 1024 * 1024), None);
    }

    #[test]
    fn our_own_process_has_no_guest() {
        let err = guest_touched_kib(std::process::id(), 64 * 1024).unwrap_err();
        assert!(
            err.to_string().contains("no writable anonymous mapping"),
            "{err}"
        );
    }
}
