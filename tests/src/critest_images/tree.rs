//! One layer's files, gathered in memory and written as a reproducible tar:
//! sorted paths, root-owned unless told, the fixed mtime of
//! [`TarBuilder`], so equal inputs give equal layer digests.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

use crate::registry::TarBuilder;

/// Symlinks followed one after another before [`Tree::copy_from`] gives up.
const MAX_LINK_DEPTH: usize = 16;

/// What a path in the layer is.
#[derive(Debug)]
enum Node {
    Dir {
        mode: u32,
        owner: (u64, u64),
    },
    File {
        mode: u32,
        data: Data,
    },
    Symlink(String),
    /// A hard link to another path of the same layer.
    Hardlink(String),
}

#[derive(Debug)]
enum Data {
    Bytes(Vec<u8>),
    /// A file on the host (in an unpacked package or a build folder),
    /// read when the tar is written.
    Host(PathBuf),
}

/// A layer's tree: relative paths (no leading `/`) to entries.
#[derive(Debug, Default)]
pub(super) struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// `path` as a tree key: relative, `.` and `..` resolved, no empty parts.
fn normalize(path: &str) -> anyhow::Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                ensure!(parts.pop().is_some(), "{path:?} leaves the layer");
            }
            _ => parts.push(part),
        }
    }
    ensure!(!parts.is_empty(), "{path:?} names the layer's root");
    Ok(parts.join("/"))
}

impl Tree {
    /// A folder (and its missing parents, 0755); an existing one takes
    /// the new mode.
    pub(super) fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<&mut Self> {
        self.dir_owned(path, mode, (0, 0))
    }

    /// A folder owned by `(uid, gid)`.
    pub(super) fn dir_owned(
        &mut self,
        path: &str,
        mode: u32,
        owner: (u64, u64),
    ) -> anyhow::Result<&mut Self> {
        self.insert(path, Node::Dir { mode, owner })
    }

    pub(super) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<&mut Self> {
        let data = Data::Bytes(data.to_vec());
        self.insert(path, Node::File { mode, data })
    }

    /// A 0644 text file.
    pub(super) fn text(&mut self, path: &str, text: &str) -> anyhow::Result<&mut Self> {
        self.file(path, 0o644, text.as_bytes())
    }

    /// A file whose content is the host file `source`'s.
    pub(super) fn host_file(
        &mut self,
        path: &str,
        mode: u32,
        source: &Path,
    ) -> anyhow::Result<&mut Self> {
        let data = Data::Host(source.to_path_buf());
        self.insert(path, Node::File { mode, data })
    }

    pub(super) fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<&mut Self> {
        self.insert(path, Node::Symlink(target.to_string()))
    }

    /// A hard link to `target`, which must be a file of this tree by the
    /// time the tar is written.
    pub(super) fn hardlink(&mut self, path: &str, target: &str) -> anyhow::Result<&mut Self> {
        let target = normalize(target)?;
        self.insert(path, Node::Hardlink(target))
    }

    /// Whether the tree has an entry at `path`.
    pub(super) fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.nodes.contains_key(&p))
    }

    /// The files whose content comes from the host, with their host paths.
    pub(super) fn host_files(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.nodes.iter().filter_map(|(path, node)| match node {
            Node::File {
                data: Data::Host(source),
                ..
            } => Some((path.as_str(), source.as_path())),
            _ => None,
        })
    }

    /// Copies `path` of the unpacked tree at `root` (a file, folder or
    /// symlink, with its mode); a symlink's target comes along too, so a
    /// library's `libfoo.so.1 -> libfoo.so.1.2.3` arrives whole.
    pub(super) fn copy_from(&mut self, root: &Path, path: &str) -> anyhow::Result<()> {
        let mut path = normalize(path)?;
        for _ in 0..MAX_LINK_DEPTH {
            let source = root.join(&path);
            let meta = fs::symlink_metadata(&source)
                .with_context(|| format!("{} has no {path}", root.display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                self.dir(&path, mode)?;
                return Ok(());
            }
            if meta.is_file() {
                self.host_file(&path, mode, &source)?;
                return Ok(());
            }
            ensure!(
                meta.file_type().is_symlink(),
                "{} is no file",
                source.display()
            );
            let target = fs::read_link(&source)?;
            let target = target
                .to_str()
                .with_context(|| format!("{} points to a non-UTF-8 path", source.display()))?
                .to_string();
            self.symlink(&path, &target)?;
            path = match target.strip_prefix('/') {
                Some(absolute) => normalize(absolute)?,
                None => {
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    normalize(&format!("{parent}/{target}"))?
                }
            };
        }
        bail!(
            "more than {MAX_LINK_DEPTH} symlinks in a row at {path} in {}",
            root.display()
        )
    }

    fn insert(&mut self, path: &str, node: Node) -> anyhow::Result<&mut Self> {
        let path = normalize(path)?;
        for (end, _) in path.match_indices('/') {
            let parent = &path[..end];
            match self.nodes.get(parent) {
                None => {
                    let dir = Node::Dir {
                        mode: 0o755,
                        owner: (0, 0),
                    };
                    self.nodes.insert(parent.to_string(), dir);
                }
                Some(Node::Dir { .. }) => {}
                Some(other) => bail!("{parent} is a {other:?}, not a folder: no {path} in it"),
            }
        }
        let restated_dir = matches!(
            (self.nodes.get(&path), &node),
            (Some(Node::Dir { .. }), Node::Dir { .. })
        );
        let inside = format!("{path}/");
        let has_entries = self
            .nodes
            .range(inside.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&inside));
        // A folder restated (with another mode) keeps what is in it.
        ensure!(
            restated_dir || !has_entries,
            "{path} has entries under it and cannot become a {node:?}"
        );
        self.nodes.insert(path, node);
        Ok(self)
    }

    /// The layer as a tar stream: entries in path order, parents before
    /// what is in them, hard links last so their targets come first.
    pub(super) fn to_tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut tar = TarBuilder::new();
        for (path, node) in &self.nodes {
            match node {
                Node::Dir { mode, owner } => {
                    tar.dir_owned(path, *mode, *owner)?;
                }
                Node::File { mode, data } => {
                    let bytes = match data {
                        Data::Bytes(bytes) => bytes.clone(),
                        Data::Host(source) => fs::read(source)
                            .with_context(|| format!("cannot read {}", source.display()))?,
                    };
                    tar.file(path, *mode, &bytes)?;
                }
                Node::Symlink(target) => {
                    tar.symlink(path, target)?;
                }
                Node::Hardlink(_) => {}
            }
        }
        for (path, node) in &self.nodes {
            if let Node::Hardlink(target) = node {
                ensure!(
                    matches!(self.nodes.get(target), Some(Node::File { .. })),
                    "{path} links to {target}, which is no file of the layer"
                );
                tar.hardlink(path, target)?;
            }
        }
        tar.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::symlink;

    use super::*;

    /// (path, kind, mode, link target or content) of every tar entry, in order.
    fn entries(tar: &[u8]) -> Vec<(String, char, u32, String)> {
        let mut archive = tar::Archive::new(tar);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Regular => 'f',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                other => panic!("{other:?}"),
            };
            let mode = header.mode().unwrap();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            out.push((path, kind, mode, link.unwrap_or(content)));
        }
        out
    }

    #[test]
    fn paths_are_normalized_and_kept_inside() {
        assert_eq!(normalize("/usr//lib/./x").unwrap(), "usr/lib/x");
        assert_eq!(normalize("lib64/../lib/x").unwrap(), "lib/x");
        assert!(normalize("../etc").is_err());
        assert!(normalize("/").is_err());
    }

    #[test]
    fn tar_is_sorted_with_parents_first_and_hardlinks_last() {
        let mut t = Tree::default();
        t.file("bin/busybox", 0o755, b"bb").unwrap();
        t.hardlink("bin/[", "bin/busybox").unwrap();
        t.hardlink("bin/sh", "/bin/busybox").unwrap();
        t.dir("tmp", 0o1777).unwrap();
        t.symlink("var/run", "/run").unwrap();
        t.text("a-b", "x").unwrap();
        let got = entries(&t.to_tar().unwrap());
        let names: Vec<_> = got.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            names,
            [
                ("a-b", 'f'),
                ("bin", 'd'),
                ("bin/busybox", 'f'),
                ("tmp", 'd'),
                ("var", 'd'),
                ("var/run", 'l'),
                ("bin/[", 'h'),
                ("bin/sh", 'h'),
            ]
        );
        assert_eq!(got[3].2, 0o1777);
        assert_eq!(got[5].3, "/run");
        assert_eq!(got[7].3, "bin/busybox");
        // Same tree, same bytes.
        assert_eq!(t.to_tar().unwrap(), t.to_tar().unwrap());
    }

    #[test]
    fn a_dangling_hardlink_or_a_file_as_folder_is_refused() {
        let mut t = Tree::default();
        t.hardlink("bin/ls", "bin/busybox").unwrap();
        assert!(t.to_tar().is_err());
        let mut t = Tree::default();
        t.text("etc", "x").unwrap();
        assert!(t.text("etc/passwd", "y").is_err());
        let mut t = Tree::default();
        t.text("etc/passwd", "x").unwrap();
        assert!(t.text("etc", "y").is_err());
        // A folder stated again keeps its entries and takes the new mode.
        t.dir("etc", 0o700).unwrap();
        assert!(t.contains("etc/passwd"));
    }

    #[test]
    fn copy_from_follows_symlinks_within_the_root() {
        let root = std::env::temp_dir().join(format!("husk-tree-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
        let real = root.join("lib/x86_64-linux-gnu/libfoo.so.1.2");
        fs::write(&real, "elf").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(
            "libfoo.so.1.2",
            root.join("lib/x86_64-linux-gnu/libfoo.so.1"),
        )
        .unwrap();
        symlink("/lib/x86_64-linux-gnu/libfoo.so.1", root.join("lib64/foo")).unwrap();
        let mut t = Tree::default();
        t.copy_from(&root, "lib64/foo").unwrap();
        let got = entries(&t.to_tar().unwrap());
        let names: Vec<_> = got.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            names,
            [
                ("lib", 'd'),
                ("lib/x86_64-linux-gnu", 'd'),
                ("lib/x86_64-linux-gnu/libfoo.so.1", 'l'),
                ("lib/x86_64-linux-gnu/libfoo.so.1.2", 'f'),
                ("lib64", 'd'),
                ("lib64/foo", 'l'),
            ]
        );
        assert_eq!(got[3].3, "elf");
        assert!(t.copy_from(&root, "lib/missing").is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
