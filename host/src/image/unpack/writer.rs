//! Creates one archive entry in the layer folder.
//!
//! We create files ourselves instead of calling `tar::Entry::unpack`:
//! that follows the `tar` crate's rules (it resolves paths through the
//! real filesystem, creates device nodes, applies no whiteout conversion
//! and cannot refuse a write through a symlink planted earlier in the same
//! archive). Here every parent is reached with O_NOFOLLOW from the layer
//! root's fd, and only the entry kinds a container image needs are made.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use super::fsops::{self, WalkError};
use super::meta::Meta;
use super::path::{LayerPath, MAX_PATH};
use super::UnpackError;

/// The whiteout prefix of the OCI layer format.
const WHITEOUT: &[u8] = b".wh.";
/// Marks its folder opaque: lower layers' content of it is hidden.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// What overlayfs reads as "this folder is opaque".
const OVERLAY_OPAQUE: &CStr = c"trusted.overlay.opaque";

/// Writes entries into one layer folder, remembering folder times to set
/// last (creating children changes a folder's mtime).
pub struct Writer {
    root: OwnedFd,
    dir_times: Vec<(LayerPath, i64, i64)>,
    pub entries: u64,
}

fn fs_err<'a>(
    entry: &'a LayerPath,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Fs {
        entry: entry.to_string(),
        op,
        source,
    }
}

fn walk_err(entry: &LayerPath) -> impl FnOnce(WalkError) -> UnpackError + '_ {
    move |source| UnpackError::Walk {
        entry: entry.to_string(),
        source,
    }
}

impl Writer {
    pub fn new(root: OwnedFd) -> Writer {
        Writer {
            root,
            dir_times: Vec::new(),
            entries: 0,
        }
    }

    /// Creates `entry` in the layer.
    pub fn add<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let path = LayerPath::parse(&raw).map_err(|source| UnpackError::Path {
            entry: String::from_utf8_lossy(&raw).into_owned(),
            source,
        })?;
        self.entries += 1;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let meta = Meta::of(entry).map_err(UnpackError::Archive)?;
        let name = path.file_name().map(|n| n.as_encoded_bytes().to_vec());
        if let Some(name) = name.as_deref().filter(|n| n.starts_with(WHITEOUT)) {
            return self.whiteout(&path, name);
        }
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => self.file(&path, &meta, entry),
            T::Directory => self.dir(&path, &meta),
            T::Symlink => self.symlink(&path, &meta, entry),
            T::Link => self.hardlink(&path, entry),
            T::Fifo => self.fifo(&path, &meta),
            T::Char | T::Block => {
                // A device node in an image would give the container
                // whatever host device its numbers name: never made.
                tracing::warn!(entry = %path, "skipping a device node in an image layer");
                Ok(())
            }
            other => {
                tracing::warn!(entry = %path, kind = ?other, "skipping an unsupported tar entry");
                Ok(())
            }
        }
    }

    /// Sets the folder times recorded by [`Writer::add`], deepest first.
    pub fn finish(mut self) -> Result<u64, UnpackError> {
        self.dir_times
            .sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().len()));
        for (path, secs, nanos) in &self.dir_times {
            match fsops::parent_of(&self.root, path, false).map_err(walk_err(path))? {
                None => fsops::set_times(&self.root, *secs, *nanos),
                Some((parent, name)) => {
                    fsops::set_times_at(parent.as_raw_fd(), name, *secs, *nanos)
                }
            }
            .map_err(fs_err(path, "set times of"))?;
        }
        Ok(self.entries)
    }

    /// The parent folder of a non-root entry, created if missing.
    fn parent<'p>(&self, path: &'p LayerPath) -> Result<(OwnedFd, &'p CString), UnpackError> {
        fsops::parent_of(&self.root, path, true)
            .map_err(walk_err(path))?
            .ok_or_else(|| UnpackError::RootEntry(path.to_string()))
    }

    /// Removes what an earlier entry left at `name` (a later entry of the
    /// same name replaces it), keeping a folder if `keep_dir`. Returns
    /// whether a folder was kept.
    fn clear(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        path: &LayerPath,
        keep_dir: bool,
    ) -> Result<bool, UnpackError> {
        let existing =
            fsops::lstat_at_opt(parent.as_raw_fd(), name).map_err(fs_err(path, "stat"))?;
        match existing {
            None => Ok(false),
            Some(st) if keep_dir && st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(true),
            Some(_) => {
                fsops::remove_all_at(parent.as_raw_fd(), name).map_err(fs_err(path, "replace"))?;
                Ok(false)
            }
        }
    }

    fn file<R: Read>(
        &mut self,
        path: &LayerPath,
        meta: &Meta,
        content: &mut R,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, path, false)?;
        let mut file =
            fsops::create_file_at(parent.as_raw_fd(), name).map_err(fs_err(path, "create"))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = content.read(&mut buf).map_err(UnpackError::Archive)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(fs_err(path, "write"))?;
        }
        self.apply(&file, path, meta)?;
        fsops::set_times(&file, meta.mtime_secs, meta.mtime_nanos)
            .map_err(fs_err(path, "set times of"))
    }

    fn dir(&mut self, path: &LayerPath, meta: &Meta) -> Result<(), UnpackError> {
        let fd = match fsops::parent_of(&self.root, path, true).map_err(walk_err(path))? {
            None => self.root.try_clone().map_err(fs_err(path, "open"))?,
            Some((parent, name)) => {
                if !self.clear(&parent, name, path, true)? {
                    fsops::mkdir_at(parent.as_raw_fd(), name, 0o700)
                        .map_err(fs_err(path, "create"))?;
                }
                fsops::open_dir_at(parent.as_raw_fd(), name).map_err(fs_err(path, "open"))?
            }
        };
        self.apply(&fd, path, meta)?;
        self.dir_times
            .push((path.clone(), meta.mtime_secs, meta.mtime_nanos));
        Ok(())
    }

    /// Stores a symlink as is: its target may point anywhere, since it is
    /// only ever resolved inside the container's root.
    fn symlink<R: Read>(
        &mut self,
        path: &LayerPath,
        meta: &Meta,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let target = link_name(path, entry)?;
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, path, false)?;
        let target = CString::new(target).map_err(|_| UnpackError::BadLink {
            entry: path.to_string(),
            reason: "target holds a NUL byte".into(),
        })?;
        fsops::symlink_at(&target, parent.as_raw_fd(), name).map_err(fs_err(path, "create"))?;
        fsops::lchown_at(parent.as_raw_fd(), name, meta.uid, meta.gid)
            .map_err(fs_err(path, "chown"))?;
        fsops::set_times_at(parent.as_raw_fd(), name, meta.mtime_secs, meta.mtime_nanos)
            .map_err(fs_err(path, "set times of"))
    }

    /// A hard link, whose target must be an earlier entry of this layer:
    /// the layer folder starts empty, so whatever exists under it was made
    /// by this archive, and the target is reached the same no-follow way.
    fn hardlink<R: Read>(
        &mut self,
        path: &LayerPath,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let raw = link_name(path, entry)?;
        let bad = |reason: String| UnpackError::BadLink {
            entry: path.to_string(),
            reason,
        };
        let target = LayerPath::parse(&raw).map_err(|e| bad(format!("target: {e}")))?;
        if target.is_root() || target == *path {
            return Err(bad(format!("target {target} is not a file")));
        }
        let (tparent, tname) = fsops::parent_of(&self.root, &target, false)
            .map_err(|e| bad(format!("target {target}: {e}")))?
            .ok_or_else(|| bad("target is the layer root".into()))?;
        match fsops::lstat_at_opt(tparent.as_raw_fd(), tname).map_err(fs_err(path, "stat"))? {
            None => {
                return Err(bad(format!(
                    "target {target} is not an earlier entry of this layer"
                )))
            }
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(bad(format!("target {target} is a folder")))
            }
            Some(_) => {}
        }
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, path, false)?;
        fsops::link_at(tparent.as_raw_fd(), tname, parent.as_raw_fd(), name)
            .map_err(fs_err(path, "link"))
    }

    fn fifo(&mut self, path: &LayerPath, meta: &Meta) -> Result<(), UnpackError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, path, false)?;
        let fd = parent.as_raw_fd();
        fsops::mknod_at(fd, name, libc::S_IFIFO | 0o600, 0).map_err(fs_err(path, "create"))?;
        fsops::lchown_at(fd, name, meta.uid, meta.gid).map_err(fs_err(path, "chown"))?;
        fsops::chmod_at(fd, name, meta.mode).map_err(fs_err(path, "chmod"))?;
        fsops::set_times_at(fd, name, meta.mtime_secs, meta.mtime_nanos)
            .map_err(fs_err(path, "set times of"))
    }

    /// Converts an OCI whiteout to overlayfs' native form, since the guest
    /// stacks these folders as overlay lower layers: `.wh.<name>` becomes a
    /// 0/0 character device `<name>`, `.wh..wh..opq` the opaque xattr on
    /// its folder.
    fn whiteout(&mut self, path: &LayerPath, name: &[u8]) -> Result<(), UnpackError> {
        if name == OPAQUE {
            let (parent, _) = self.parent(path)?;
            return fsops::set_xattr(&parent, OVERLAY_OPAQUE, b"y")
                .map_err(fs_err(path, "mark opaque"));
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk and friends): meaningless here.
            tracing::debug!(entry = %path, "skipping aufs metadata");
            return Ok(());
        }
        let hidden = path
            .with_file_name(&name[WHITEOUT.len()..])
            .map_err(|source| UnpackError::Path {
                entry: path.to_string(),
                source,
            })?;
        let (parent, hidden_name) = self.parent(&hidden)?;
        self.clear(&parent, hidden_name, &hidden, false)?;
        fsops::mknod_at(
            parent.as_raw_fd(),
            hidden_name,
            libc::S_IFCHR,
            libc::makedev(0, 0),
        )
        .map_err(fs_err(&hidden, "create whiteout"))
    }

    /// Ownership, mode (after chown, which clears setuid) and xattrs of an
    /// open file or folder.
    fn apply(&self, fd: &impl AsRawFd, path: &LayerPath, meta: &Meta) -> Result<(), UnpackError> {
        fsops::fchown(fd, meta.uid, meta.gid).map_err(fs_err(path, "chown"))?;
        fsops::fchmod(fd, meta.mode).map_err(fs_err(path, "chmod"))?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = fsops::set_xattr(fd, name, value) {
                // Like containerd: an xattr the store's filesystem cannot
                // hold is not worth failing the pull for.
                tracing::warn!(entry = %path, xattr = ?name, error = %e, "cannot set xattr");
            }
        }
        Ok(())
    }
}

/// The link target of a symlink or hard link entry, bounded in length.
fn link_name<R: Read>(path: &LayerPath, entry: &tar::Entry<'_, R>) -> Result<Vec<u8>, UnpackError> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| UnpackError::BadLink {
            entry: path.to_string(),
            reason: "no link target".into(),
        })?
        .into_owned();
    if target.is_empty() || target.len() > MAX_PATH {
        return Err(UnpackError::BadLink {
            entry: path.to_string(),
            reason: format!("link target of {} bytes", target.len()),
        });
    }
    Ok(target)
}
