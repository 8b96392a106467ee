//! Entering the container's namespaces from inside its init. The pid
//! namespace is not here: it only applies to children, so the agent sets it
//! up on the thread that spawns the init.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Why a namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("linux.namespaces: cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("linux.namespaces: cannot join {path}: {source}")]
    Join {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("linux.namespaces: cannot create {kinds:?} namespaces: {source}")]
    Create {
        kinds: CloneFlags,
        #[source]
        source: nix::Error,
    },
}

fn flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

fn join(path: &str, kind: CloneFlags) -> Result<(), NamespaceError> {
    let file = File::open(path).map_err(|source| NamespaceError::Open {
        path: path.to_owned(),
        source,
    })?;
    setns(file, kind).map_err(|source| NamespaceError::Join {
        path: path.to_owned(),
        source,
    })
}

/// For a new container: joins the namespaces the spec gives a path for,
/// then creates the others it lists (pid excepted). The mount namespace is
/// always new: the rootfs must never be mounted in the agent's.
pub fn enter_for_container(spec: &Spec) -> Result<bool, NamespaceError> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut create = CloneFlags::CLONE_NEWNS;
    let mut new_uts = false;
    for ns in &namespaces {
        let kind = flag(ns.typ());
        if kind == CloneFlags::CLONE_NEWPID {
            continue;
        }
        match ns.path() {
            Some(path) => join(&path.to_string_lossy(), kind)?,
            None => {
                create |= kind;
                new_uts |= kind == CloneFlags::CLONE_NEWUTS;
            }
        }
    }
    unshare(create).map_err(|source| NamespaceError::Create {
        kinds: create,
        source,
    })?;
    Ok(new_uts)
}

/// For an exec: joins every namespace of `target` that differs from ours,
/// mount last (after it, the agent's /proc is out of sight).
pub fn enter_for_exec(target: u32) -> Result<(), NamespaceError> {
    const ORDER: [(&str, CloneFlags); 5] = [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    // Open them all first: joining the mount namespace hides /proc/<pid>.
    let mut files = Vec::new();
    for (name, kind) in ORDER {
        let theirs = format!("/proc/{target}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            let file = File::open(&theirs).map_err(|source| NamespaceError::Open {
                path: theirs.clone(),
                source,
            })?;
            files.push((theirs, file, kind));
        }
    }
    for (path, file, kind) in files {
        setns(file, kind).map_err(|source| NamespaceError::Join { path, source })?;
    }
    Ok(())
}
