//! What an OCI `mounts[]` entry asks for: its kind and its fstab-style
//! option strings, turned into mount(2) flags, propagation changes,
//! recursive attributes (mount_setattr) and filesystem data.

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::RootfsError;

/// `MS_NOSYMFOLLOW` (Linux 5.10); nix's `MsFlags` does not name it.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// Flags that live on the mount rather than the superblock: the only ones a
/// bind remount (`MS_REMOUNT | MS_BIND`) changes or must carry over.
pub(super) const PER_MOUNT: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME)
    .union(MS_NOSYMFOLLOW);

/// Options that set (`false`) or clear (`true`) a mount(2) flag.
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("suid", true, MsFlags::MS_NOSUID),
    ("nodev", false, MsFlags::MS_NODEV),
    ("dev", true, MsFlags::MS_NODEV),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("atime", true, MsFlags::MS_NOATIME),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("nosymfollow", false, MS_NOSYMFOLLOW),
    ("symfollow", true, MS_NOSYMFOLLOW),
];

/// Propagation options; the `r` forms apply to the whole subtree.
const PROPAGATION: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// The mount flags of a propagation name (`rslave`, ...), as used by both
/// mount options and `linux.rootfsPropagation`.
pub(super) fn propagation(name: &str) -> Option<MsFlags> {
    PROPAGATION
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

/// Recursive attribute options (runc's `rro` family, used by Kubernetes'
/// recursive read-only mounts): a plain remount only changes the top mount
/// of an `rbind`, mount_setattr(AT_RECURSIVE) changes all of them.
const RECURSIVE: &[(&str, bool, u64)] = &[
    ("rro", false, libc::MOUNT_ATTR_RDONLY),
    ("rrw", true, libc::MOUNT_ATTR_RDONLY),
    ("rnosuid", false, libc::MOUNT_ATTR_NOSUID),
    ("rsuid", true, libc::MOUNT_ATTR_NOSUID),
    ("rnodev", false, libc::MOUNT_ATTR_NODEV),
    ("rdev", true, libc::MOUNT_ATTR_NODEV),
    ("rnoexec", false, libc::MOUNT_ATTR_NOEXEC),
    ("rexec", true, libc::MOUNT_ATTR_NOEXEC),
    ("rnodiratime", false, libc::MOUNT_ATTR_NODIRATIME),
    ("rdiratime", true, libc::MOUNT_ATTR_NODIRATIME),
    ("rnosymfollow", false, libc::MOUNT_ATTR_NOSYMFOLLOW),
    ("rsymfollow", true, libc::MOUNT_ATTR_NOSYMFOLLOW),
];

/// Recursive atime modes: the kernel takes these as one field, not bits.
const RECURSIVE_ATIME: &[(&str, u64)] = &[
    ("rnoatime", libc::MOUNT_ATTR_NOATIME),
    ("rstrictatime", libc::MOUNT_ATTR_STRICTATIME),
    ("rrelatime", libc::MOUNT_ATTR_RELATIME),
];

/// Options other runtimes know but husk does not implement. Refused rather
/// than passed on as data, where they would fail obscurely or be ignored.
const UNSUPPORTED: &[&str] = &["tmpcopyup", "idmap", "ridmap", "copy-symlink"];

/// mount_setattr(2) changes, applied with AT_RECURSIVE.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecursiveAttrs {
    pub set: u64,
    pub clear: u64,
}

impl RecursiveAttrs {
    pub(super) fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0
    }
}

/// One `mounts[i].options` list, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountOptions {
    /// Flags to set.
    pub set: MsFlags,
    /// Flags explicitly cleared (`rw`, `suid`, ...); matters for remounts,
    /// which otherwise carry the existing flags over.
    pub clear: MsFlags,
    /// `bind` or `rbind` was given.
    pub bind: bool,
    /// `rbind`: bind the whole subtree.
    pub recursive: bool,
    /// `remount`: change the mount already at the destination.
    pub remount: bool,
    /// Propagation changes, applied in order after mounting.
    pub propagation: Vec<MsFlags>,
    /// Recursive attribute changes.
    pub attrs: RecursiveAttrs,
    /// Everything else: filesystem data, e.g. `mode=755`, `newinstance`.
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            set: MsFlags::empty(),
            clear: MsFlags::empty(),
            bind: false,
            recursive: false,
            remount: false,
            propagation: Vec::new(),
            attrs: RecursiveAttrs::default(),
            data: Vec::new(),
        }
    }
}

/// What a single option string is.
#[derive(Debug, PartialEq, Eq)]
enum Opt {
    Flag {
        clear: bool,
        flag: MsFlags,
    },
    Bind {
        recursive: bool,
    },
    Remount,
    Propagation(MsFlags),
    Recursive {
        clear: bool,
        attr: u64,
    },
    RecursiveAtime(u64),
    /// `defaults`: nothing to do.
    Nothing,
    Data,
}

fn classify(option: &str) -> Result<Opt, &'static str> {
    if option.is_empty() {
        return Err("empty mount option");
    }
    if option.contains(',') || option.contains('\0') {
        return Err("a mount option must not contain ',' or NUL");
    }
    if UNSUPPORTED.contains(&option) {
        return Err("mount option not supported by husk");
    }
    if let Some(&(_, clear, flag)) = FLAGS.iter().find(|(name, ..)| *name == option) {
        return Ok(Opt::Flag { clear, flag });
    }
    if let Some(flag) = propagation(option) {
        return Ok(Opt::Propagation(flag));
    }
    if let Some(&(_, clear, attr)) = RECURSIVE.iter().find(|(name, ..)| *name == option) {
        return Ok(Opt::Recursive { clear, attr });
    }
    if let Some(&(_, mode)) = RECURSIVE_ATIME.iter().find(|(name, _)| *name == option) {
        return Ok(Opt::RecursiveAtime(mode));
    }
    Ok(match option {
        "bind" => Opt::Bind { recursive: false },
        "rbind" => Opt::Bind { recursive: true },
        "remount" => Opt::Remount,
        "defaults" => Opt::Nothing,
        data if data.starts_with('=') => return Err("mount data with an empty key"),
        _ => Opt::Data,
    })
}

/// An option that cannot be honoured: its index in `options` and why.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OptionError {
    pub index: usize,
    pub reason: &'static str,
}

/// Interprets an options list; later options override earlier ones.
pub(super) fn parse(options: &[String]) -> Result<MountOptions, OptionError> {
    let mut out = MountOptions::default();
    for (index, option) in options.iter().enumerate() {
        match classify(option).map_err(|reason| OptionError { index, reason })? {
            Opt::Flag { clear: false, flag } => {
                out.set |= flag;
                out.clear &= !flag;
            }
            Opt::Flag { clear: true, flag } => {
                out.clear |= flag;
                out.set &= !flag;
            }
            Opt::Bind { recursive } => {
                out.bind = true;
                out.recursive |= recursive;
            }
            Opt::Remount => out.remount = true,
            Opt::Propagation(flag) => out.propagation.push(flag),
            Opt::Recursive { clear: false, attr } => {
                out.attrs.set |= attr;
                out.attrs.clear &= !attr;
            }
            Opt::Recursive { clear: true, attr } => {
                out.attrs.clear |= attr;
                out.attrs.set &= !attr;
            }
            Opt::RecursiveAtime(mode) => {
                out.attrs.clear |= libc::MOUNT_ATTR__ATIME;
                out.attrs.set = (out.attrs.set & !libc::MOUNT_ATTR__ATIME) | mode;
            }
            Opt::Nothing => {}
            Opt::Data => out.data.push(option.clone()),
        }
    }
    Ok(out)
}

impl MountOptions {
    /// The data argument of mount(2), if any.
    pub(super) fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }

    /// Whether a bind mount needs the second, remount pass.
    pub(super) fn needs_remount(&self) -> bool {
        self.set.union(self.clear).intersects(PER_MOUNT)
    }

    /// Flags for a bind remount: what the mount has now (`existing`, which
    /// includes flags a user namespace locks) with ours applied on top, so
    /// the remount neither drops a locked flag nor ignores an asked one.
    pub(super) fn remount_flags(&self, existing: MsFlags) -> MsFlags {
        let mut flags = (existing & PER_MOUNT & !self.clear) | (self.set & PER_MOUNT);
        // An explicit atime mode replaces the one carried over.
        if self
            .set
            .intersects(MsFlags::MS_STRICTATIME | MsFlags::MS_NOATIME)
        {
            flags &= !MsFlags::MS_RELATIME;
        }
        if self.set.contains(MsFlags::MS_STRICTATIME) {
            flags &= !MsFlags::MS_NOATIME;
        }
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT
    }
}

/// How a `mounts[]` entry is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MountKind {
    /// A bind mount of a path the agent can see.
    Bind,
    /// `cgroup`/`cgroup2`: the container's own cgroup directory.
    Cgroup,
    /// A fresh filesystem instance of this type.
    Fs(&'static str),
}

/// Filesystem types mounted as such.
const FS_TYPES: &[&str] = &["proc", "sysfs", "devpts", "mqueue", "tmpfs"];

/// Decides the kind of `mounts[index]` whose options parsed to `options`.
/// As in runc, a `bind`/`rbind` option makes any entry a bind mount.
pub(super) fn mount_kind(
    index: usize,
    mount: &Mount,
    options: &MountOptions,
) -> Result<MountKind, RootfsError> {
    if options.bind {
        return Ok(MountKind::Bind);
    }
    let field = format!("mounts[{index}].type");
    match mount.typ().as_deref() {
        None | Some("") => Err(RootfsError::invalid(
            field,
            "",
            "missing (and no bind/rbind option)",
        )),
        Some("bind") => Ok(MountKind::Bind),
        Some("none") => Err(RootfsError::invalid(
            field,
            "none",
            "type none needs a bind or rbind option",
        )),
        Some("cgroup" | "cgroup2") => Ok(MountKind::Cgroup),
        Some("overlay") => Err(RootfsError::invalid(
            field,
            "overlay",
            "overlay mounts are not supported (the rootfs is the only overlay)",
        )),
        Some(other) => FS_TYPES
            .iter()
            .find(|t| **t == other)
            .map(|t| MountKind::Fs(t))
            .ok_or_else(|| RootfsError::invalid(field, other, "unsupported mount type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Result<MountOptions, OptionError> {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_set_and_clear_with_last_one_winning() {
        let o = opts(&["ro", "nosuid", "nodev", "rw", "exec", "noexec"]).unwrap();
        assert_eq!(
            o.set,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
        );
        assert_eq!(o.clear, MsFlags::MS_RDONLY);
        assert!(!o.bind && !o.remount && o.data.is_empty());
    }

    #[test]
    fn every_listed_flag_option_is_known() {
        for name in [
            "ro",
            "rw",
            "nosuid",
            "suid",
            "nodev",
            "dev",
            "noexec",
            "exec",
            "sync",
            "async",
            "dirsync",
            "mand",
            "nomand",
            "atime",
            "noatime",
            "diratime",
            "nodiratime",
            "relatime",
            "norelatime",
            "strictatime",
        ] {
            let o = opts(&[name]).unwrap();
            assert!(o.data.is_empty(), "{name} was taken as data");
            assert!(!(o.set | o.clear).is_empty(), "{name} changed no flag");
        }
    }

    #[test]
    fn bind_propagation_and_remount() {
        let o = opts(&["rbind", "rprivate", "slave", "remount"]).unwrap();
        assert!(o.bind && o.recursive && o.remount);
        assert_eq!(
            o.propagation,
            vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC, MsFlags::MS_SLAVE]
        );
        let o = opts(&["bind", "unbindable"]).unwrap();
        assert!(o.bind && !o.recursive);
        assert_eq!(o.propagation, vec![MsFlags::MS_UNBINDABLE]);
        for p in ["private", "shared", "rshared", "rslave", "runbindable"] {
            assert_eq!(opts(&[p]).unwrap().propagation.len(), 1, "{p}");
        }
    }

    #[test]
    fn unknown_words_and_key_values_are_data_in_order() {
        let o = opts(&[
            "nosuid",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ])
        .unwrap();
        assert_eq!(
            o.data().as_deref(),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5")
        );
        assert_eq!(o.set, MsFlags::MS_NOSUID);
        assert_eq!(opts(&["defaults"]).unwrap(), MountOptions::default());
        assert_eq!(opts(&[]).unwrap().data(), None);
    }

    #[test]
    fn recursive_attributes() {
        let o = opts(&["rbind", "rro", "rnosuid", "rnoatime"]).unwrap();
        assert_eq!(
            o.attrs.set,
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOATIME
        );
        assert_eq!(o.attrs.clear, libc::MOUNT_ATTR__ATIME);
        let o = opts(&["rro", "rrw"]).unwrap();
        assert_eq!(o.attrs.set, 0);
        assert_eq!(o.attrs.clear, libc::MOUNT_ATTR_RDONLY);
        assert!(o.data.is_empty());
    }

    #[test]
    fn bad_options_are_refused_with_their_index() {
        for (list, index) in [
            (&["ro", ""][..], 1),
            (&["mode=755,uid=0"][..], 0),
            (&["ro", "nosuid", "tmpcopyup"][..], 2),
            (&["idmap"][..], 0),
            (&["=x"][..], 0),
        ] {
            assert_eq!(opts(list).unwrap_err().index, index, "{list:?}");
        }
    }

    #[test]
    fn remount_flags_keep_existing_and_apply_changes() {
        let o = opts(&["ro", "suid"]).unwrap();
        assert!(o.needs_remount());
        let existing = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME;
        assert_eq!(
            o.remount_flags(existing),
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NODEV
                | MsFlags::MS_RELATIME
        );
        let o = opts(&["strictatime"]).unwrap();
        assert!(!o.remount_flags(existing).contains(MsFlags::MS_RELATIME));
        assert!(!opts(&["rbind", "rprivate"]).unwrap().needs_remount());
    }

    fn mount(typ: Option<&str>) -> Mount {
        let mut m = Mount::default();
        m.set_typ(typ.map(str::to_owned));
        m
    }

    #[test]
    fn kinds() {
        let plain = MountOptions::default();
        let bind = opts(&["rbind"]).unwrap();
        assert_eq!(
            mount_kind(0, &mount(Some("bind")), &plain).unwrap(),
            MountKind::Bind
        );
        assert_eq!(
            mount_kind(0, &mount(Some("none")), &bind).unwrap(),
            MountKind::Bind
        );
        assert_eq!(mount_kind(0, &mount(None), &bind).unwrap(), MountKind::Bind);
        assert_eq!(
            mount_kind(0, &mount(Some("cgroup2")), &plain).unwrap(),
            MountKind::Cgroup
        );
        assert_eq!(
            mount_kind(0, &mount(Some("tmpfs")), &plain).unwrap(),
            MountKind::Fs("tmpfs")
        );
        for (typ, needle) in [
            (Some("ext4"), "\"ext4\""),
            (Some("overlay"), "overlay"),
            (Some("none"), "none"),
            (None, "missing"),
        ] {
            let err = mount_kind(7, &mount(typ), &plain).unwrap_err();
            assert!(err.is_invalid_argument());
            let msg = err.to_string();
            assert!(msg.starts_with("mounts[7].type"), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        }
    }
}
