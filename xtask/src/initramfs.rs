//! Packs the guest initramfs: husk-agent as /init.
//!
//! Uncompressed newc cpio, so the kernel needs no decompressor and unpacks
//! it at memory speed. Deterministic (fixed order, inode numbers, owners,
//! mtime 0) so its hash, and everything keyed on it, is stable.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cpio::newc::{trailer, Builder, ModeFileType};

use crate::cache;

/// Bump when the archive layout below changes, to invalidate the cache.
const RECIPE: &[u8] = b"1";

/// Packs (or reuses from the cache) the initramfs around `agent`.
pub fn build(agent: &Path) -> anyhow::Result<PathBuf> {
    let agent_bytes =
        std::fs::read(agent).with_context(|| format!("cannot read {}", agent.display()))?;
    let dir = cache::entry(
        "initramfs",
        &cache::key(&[("agent", &agent_bytes), ("recipe", RECIPE)]),
    );
    let path = dir.join("initramfs.cpio");
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let archive = pack(&agent_bytes)?;
    cache::write_atomic(&path, &archive)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// One archive member.
enum Node<'a> {
    Dir { mode: u32 },
    CharDev { mode: u32, major: u32, minor: u32 },
    File { mode: u32, data: &'a [u8] },
}

/// The archive's contents, parents before children.
fn layout(agent: &[u8]) -> Vec<(&'static str, Node<'_>)> {
    vec![
        ("dev", Node::Dir { mode: 0o755 }),
        // The kernel opens /dev/console for init's stdin/stdout/stderr
        // before init runs, when devtmpfs is not mounted yet: without this
        // node the agent starts with no output at all.
        (
            "dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        ),
        ("etc", Node::Dir { mode: 0o755 }),
        ("proc", Node::Dir { mode: 0o755 }),
        ("run", Node::Dir { mode: 0o755 }),
        ("sys", Node::Dir { mode: 0o755 }),
        ("tmp", Node::Dir { mode: 0o1777 }),
        (
            "init",
            Node::File {
                mode: 0o755,
                data: agent,
            },
        ),
    ]
}

/// The initramfs around the agent's bytes, as one cpio archive.
fn pack(agent: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(agent.len() + 4096);
    for (ino, (name, node)) in (1..).zip(layout(agent)) {
        let entry = Builder::new(name).ino(ino).uid(0).gid(0).mtime(0);
        let (entry, data): (Builder, &[u8]) = match node {
            Node::Dir { mode } => (
                entry
                    .mode(mode)
                    .set_mode_file_type(ModeFileType::Directory)
                    .nlink(2),
                &[],
            ),
            Node::CharDev { mode, major, minor } => (
                entry
                    .mode(mode)
                    .set_mode_file_type(ModeFileType::Char)
                    .rdev_major(major)
                    .rdev_minor(minor),
                &[],
            ),
            Node::File { mode, data } => (
                entry.mode(mode).set_mode_file_type(ModeFileType::Regular),
                data,
            ),
        };
        let size = u32::try_from(data.len())
            .with_context(|| format!("{name} is too large for a newc cpio (4 GiB)"))?;
        let mut writer = entry.write(&mut out, size);
        writer.write_all(data)?;
        writer.finish()?;
    }
    trailer(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpio::NewcReader;
    use std::io::{self, Read};

    struct Member {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        mtime: u32,
        data: Vec<u8>,
    }

    fn unpack(mut archive: &[u8]) -> io::Result<Vec<Member>> {
        let mut members = Vec::new();
        loop {
            let mut reader = NewcReader::new(archive)?;
            if reader.entry().is_trailer() {
                return Ok(members);
            }
            let mut data = Vec::new();
            reader.read_to_end(&mut data)?;
            let e = reader.entry();
            members.push(Member {
                name: e.name().to_owned(),
                mode: e.mode(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                mtime: e.mtime(),
                data,
            });
            archive = reader.finish()?;
        }
    }

    fn find<'a>(members: &'a [Member], name: &str) -> &'a Member {
        members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing from the archive"))
    }

    #[test]
    fn holds_init_console_and_mount_points() {
        // Odd length: exercises the 4-byte padding after the file data.
        let agent = b"\x7fELF pretend agent, 31 bytes!!".to_vec();
        let members = unpack(&pack(&agent).unwrap()).unwrap();

        let init = find(&members, "init");
        assert_eq!(init.data, agent);
        assert_eq!(init.mode, 0o100755);

        let console = find(&members, "dev/console");
        assert_eq!(console.mode, 0o020600);
        assert_eq!(console.rdev, (5, 1));
        assert!(console.data.is_empty());

        for dir in ["dev", "proc", "sys", "run", "tmp", "etc"] {
            assert_eq!(find(&members, dir).mode & 0o170000, 0o040000, "{dir}");
        }
        assert!(members.iter().all(|m| m.mtime == 0));
        let dev = members.iter().position(|m| m.name == "dev").unwrap();
        let console = members
            .iter()
            .position(|m| m.name == "dev/console")
            .unwrap();
        assert!(dev < console, "parents must come first");
    }

    #[test]
    fn is_deterministic() {
        assert_eq!(pack(b"agent").unwrap(), pack(b"agent").unwrap());
        assert_ne!(pack(b"agent").unwrap(), pack(b"agent2").unwrap());
    }
}
