//! Carries out the spec's `mounts[]`, in order, under the new rootfs.
//!
//! Every destination is resolved (and created) with
//! [`secure_path`](super::secure_path) and mounted through
//! `/proc/thread-self/fd/N` of the resolved fd, so the image's symlinks
//! cannot send a mount outside the rootfs.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{fstat, Mode, SFlag};
use oci_spec::runtime::{Mount, Spec};

use super::options::{self, MountKind, MountOptions};
use super::secure_path::{create_in_root, fd_path, open_in_root, Leaf};
use super::sys::{mount, mount_flags, mount_setattr_recursive, set_propagation};
use super::{RootfsError, RootfsPlan};

/// Flags every mount of a cgroup directory or of the sysfs fallback gets.
const SAFE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounts `spec.mounts` under `root`, the rootfs's `O_PATH` fd.
pub(super) fn mount_all(root: &OwnedFd, spec: &Spec, plan: &RootfsPlan) -> Result<(), RootfsError> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mount_one(root, i, m, plan)?;
    }
    Ok(())
}

fn mount_one(root: &OwnedFd, i: usize, m: &Mount, plan: &RootfsPlan) -> Result<(), RootfsError> {
    let field = format!("mounts[{i}]");
    let list = m.options().as_deref().unwrap_or_default();
    let opts = options::parse(list).map_err(|e| {
        RootfsError::invalid(
            format!("{field}.options[{}]", e.index),
            &list[e.index],
            e.reason,
        )
    })?;
    let target = Target {
        root,
        field: &field,
        destination: m.destination(),
    };
    match options::mount_kind(i, m, &opts)? {
        MountKind::Bind => {
            let source = m.source().as_deref().ok_or_else(|| {
                RootfsError::invalid(format!("{field}.source"), "", "a bind mount needs a source")
            })?;
            target.bind(source, &opts, Some(&plan.bind_roots))
        }
        MountKind::Cgroup => target.cgroup(plan.cgroup_dir.as_deref(), &opts),
        MountKind::Fs(fstype) => {
            let source = m.source().as_deref().unwrap_or(Path::new(fstype));
            target.filesystem(source, fstype, &opts)
        }
    }
}

/// One destination inside the rootfs.
struct Target<'a> {
    root: &'a OwnedFd,
    field: &'a str,
    destination: &'a Path,
}

impl Target<'_> {
    fn err(&self, action: &'static str) -> impl FnOnce(nix::Error) -> RootfsError {
        RootfsError::sys(self.field, action, self.destination.to_path_buf())
    }

    fn create(&self, leaf: Leaf) -> Result<OwnedFd, RootfsError> {
        create_in_root(self.root, self.destination, leaf).map_err(self.err("create mount point"))
    }

    /// The mount now on top of the destination, for the follow-up passes:
    /// the fd from before the mount still names the covered directory.
    fn reopen(&self) -> Result<OwnedFd, RootfsError> {
        open_in_root(self.root, self.destination).map_err(self.err("reopen mount point"))
    }

    /// `MS_BIND`, then a bind remount for the per-mount flags, then the
    /// recursive attributes and propagation.
    /// `roots`: where a spec-given source must resolve (None for our own
    /// cgroup directory).
    fn bind(
        &self,
        source: &Path,
        opts: &MountOptions,
        roots: Option<&[PathBuf]>,
    ) -> Result<(), RootfsError> {
        // Open once and mount what was opened, so the source checked here
        // is the one mounted even if the path changes meanwhile.
        let src = open(source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(RootfsError::sys(self.field, "open bind source", source))?;
        if let Some(roots) = roots {
            check_opened_source(&src, roots).map_err(|reason| {
                RootfsError::invalid(
                    format!("{}.source", self.field),
                    source.display().to_string(),
                    reason,
                )
            })?;
        }
        let is_dir = fstat(&src)
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
            .map_err(RootfsError::sys(self.field, "stat bind source", source))?;
        let dst = self.create(if is_dir { Leaf::Dir } else { Leaf::File })?;
        let mut flags = MsFlags::MS_BIND;
        if opts.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&fd_path(&src)), &fd_path(&dst), None, flags, None)
            .map_err(self.err("bind mount onto"))?;
        self.finish(opts, opts.needs_remount())
    }

    /// The container's own cgroup directory, read-only unless `rw` was
    /// given; on a cgroup v1 host (no directory) an empty read-only tmpfs,
    /// so software probing the path finds a mount instead of image content.
    fn cgroup(&self, dir: Option<&Path>, opts: &MountOptions) -> Result<(), RootfsError> {
        let mut opts = opts.clone();
        opts.set |= SAFE;
        if !opts.clear.contains(MsFlags::MS_RDONLY) {
            opts.set |= MsFlags::MS_RDONLY;
        }
        opts.bind = true;
        opts.recursive = false;
        opts.data.clear();
        match dir {
            Some(dir) => self.bind(dir, &opts, None),
            None => {
                opts.set |= MsFlags::MS_RDONLY;
                let dst = self.create(Leaf::Dir)?;
                mount(
                    Some(Path::new("cgroup")),
                    &fd_path(&dst),
                    Some("tmpfs"),
                    opts.set,
                    Some("mode=755"),
                )
                .map_err(self.err("mount read-only tmpfs (no cgroup v2) on"))?;
                self.finish(&opts, false)
            }
        }
    }

    /// A fresh instance of `fstype`, or with `remount` a change to the one
    /// already there.
    fn filesystem(
        &self,
        source: &Path,
        fstype: &str,
        opts: &MountOptions,
    ) -> Result<(), RootfsError> {
        let dst = self.create(Leaf::Dir)?;
        let data = opts.data();
        if opts.remount {
            let flags = opts.set | MsFlags::MS_REMOUNT;
            mount(
                None,
                &fd_path(&self.reopen()?),
                None,
                flags,
                data.as_deref(),
            )
            .map_err(self.err("remount"))?;
            return self.finish(opts, false);
        }
        let result = if fstype == "sysfs" && tests_refuse_sysfs() {
            Err(nix::Error::EPERM)
        } else {
            mount(
                Some(source),
                &fd_path(&dst),
                Some(fstype),
                opts.set,
                data.as_deref(),
            )
        };
        match result {
            // A new sysfs instance needs a network namespace owned by our
            // user namespace; without one the kernel says EPERM.
            Err(nix::Error::EPERM) if fstype == "sysfs" => self.sysfs_fallback(&dst, opts),
            other => {
                other.map_err(self.err(match fstype {
                    "proc" => "mount proc on",
                    "sysfs" => "mount sysfs on",
                    "devpts" => "mount devpts on",
                    "mqueue" => "mount mqueue on",
                    _ => "mount tmpfs on",
                }))?;
                self.finish(opts, false)
            }
        }
    }

    /// The agent's own /sys, bound read-only. Deliberately not `rbind`: a
    /// read-only remount only reaches the top mount, and the submounts
    /// (the agent's cgroup tree, debugfs, ...) would stay writable.
    fn sysfs_fallback(&self, dst: &OwnedFd, opts: &MountOptions) -> Result<(), RootfsError> {
        mount(
            Some(Path::new("/sys")),
            &fd_path(dst),
            None,
            MsFlags::MS_BIND,
            None,
        )
        .map_err(self.err("bind /sys (sysfs refused) onto"))?;
        let mut opts = opts.clone();
        opts.set |= SAFE | MsFlags::MS_RDONLY;
        opts.clear = MsFlags::empty();
        self.finish(&opts, true)
    }

    /// The passes after the mount itself.
    fn finish(&self, opts: &MountOptions, remount: bool) -> Result<(), RootfsError> {
        if !remount && opts.attrs.is_empty() && opts.propagation.is_empty() {
            return Ok(());
        }
        let top = self.reopen()?;
        if remount {
            let existing = mount_flags(&top).map_err(self.err("read mount flags of"))?;
            mount(
                None,
                &fd_path(&top),
                None,
                opts.remount_flags(existing),
                None,
            )
            .map_err(self.err("remount with flags"))?;
        }
        if !opts.attrs.is_empty() {
            mount_setattr_recursive(&top, opts.attrs)
                .map_err(self.err("set recursive attributes on"))?;
        }
        for flags in &opts.propagation {
            set_propagation(&fd_path(&top), *flags).map_err(self.err("set propagation of"))?;
        }
        Ok(())
    }
}

/// Set by a test to take the sysfs fallback on a host that would not need
/// it.
#[cfg(test)]
pub(super) static REFUSE_SYSFS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn tests_refuse_sysfs() -> bool {
    #[cfg(test)]
    return REFUSE_SYSFS.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    false
}

/// Where the opened source really is (the kernel's name for the fd, every
/// symlink resolved) must lie under one of `roots`.
fn check_opened_source(src: &OwnedFd, roots: &[PathBuf]) -> Result<(), String> {
    let real = std::fs::read_link(fd_path(src)).map_err(|e| format!("cannot resolve: {e}"))?;
    if roots.iter().any(|root| real.starts_with(root)) {
        Ok(())
    } else {
        Err(format!(
            "resolves to {} at mount time, outside the allowed folders",
            real.display()
        ))
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn an_opened_source_must_resolve_under_a_root() {
        let dir = std::env::temp_dir().join(format!("husk-bind-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("allowed/vol")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("allowed/escape")).unwrap();
        let roots = [dir.join("allowed").canonicalize().unwrap()];
        let opened = |p: &str| {
            open(
                &dir.join(p),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        };
        assert!(check_opened_source(&opened("allowed/vol"), &roots).is_ok());
        let err = check_opened_source(&opened("allowed/escape"), &roots).unwrap_err();
        assert!(err.contains("/etc"), "{err}");
        assert!(check_opened_source(&opened("."), &roots).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
