//! The container's mounts: the standard kernel filesystems, the pod's
//! /etc/hosts, /etc/resolv.conf and /etc/hostname, and the CRI's volumes.
//!
//! The agent's engine fills /dev (device nodes, links, /dev/shm folder)
//! under whatever the spec mounts there but mounts nothing by itself, so
//! /dev, /dev/pts, /dev/shm and /dev/mqueue are listed here as runc's
//! default spec does.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{LinuxContainerSecurityContext, MountPropagation};
use oci_spec::runtime::{Mount, MountBuilder};

use super::{MountSource, SpecError, SpecInput};

/// `(destination, type, source, options)` of the standard mounts; `/sys`
/// and `/sys/fs/cgroup` get `ro` or `rw` appended.
const STANDARD: &[(&str, &str, &str, &[&str])] = &[
    ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    ),
    (
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    ),
    ("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev"]),
    (
        "/sys/fs/cgroup",
        "cgroup2",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime"],
    ),
];

/// The mounts, parents before children, and the root propagation the
/// volumes need (`None`: the agent's default, rprivate).
pub(super) struct Mounts {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Option<String>,
}

/// See the module comment. A CRI volume at the same destination as a
/// standard or pod file mount replaces it (kubelet mounts its own
/// /etc/hosts, and may mount /dev/shm). Sorted by depth, stably, so a
/// parent is mounted before what lies inside it whatever the order asked.
pub(super) fn build(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
) -> Result<Mounts, SpecError> {
    let cri = &input.container.mounts;
    if cri.len() != input.mount_sources.len() {
        return Err(SpecError::invalid(
            "mounts",
            format!(
                "{} mounts but {} guest sources (daemon bug)",
                cri.len(),
                input.mount_sources.len()
            ),
        ));
    }
    let mut volumes = Vec::with_capacity(cri.len());
    let mut shared = false;
    let mut slave = false;
    for (i, m) in cri.iter().enumerate() {
        let (mounts, propagation) = volume(i, m, &input.mount_sources[i])?;
        shared |= propagation == MountPropagation::PropagationBidirectional;
        slave |= propagation == MountPropagation::PropagationHostToContainer;
        volumes.extend(mounts);
    }
    let taken = |dest: &str| volumes.iter().any(|v| v.destination() == Path::new(dest));

    let rw = if sc.privileged { "rw" } else { "ro" };
    let mut mounts = Vec::new();
    for (dest, typ, source, options) in STANDARD {
        if taken(dest) {
            continue;
        }
        let mut options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        if dest.starts_with("/sys") {
            options.push(rw.to_string());
        }
        mounts.push(mount(dest, typ, source, options)?);
    }
    // containerd's choice: writable, like the rest of the root, unless the
    // root is read-only. They are the pod's files, so a write is seen by
    // every container of the pod, as with containerd.
    let files = input.sandbox_files;
    let file_rw = if sc.readonly_rootfs { "ro" } else { "rw" };
    for (dest, source, field) in [
        ("/etc/hosts", &files.hosts, "sandbox_files.hosts"),
        (
            "/etc/resolv.conf",
            &files.resolv_conf,
            "sandbox_files.resolv_conf",
        ),
        ("/etc/hostname", &files.hostname, "sandbox_files.hostname"),
    ] {
        let Some(source) = source.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if taken(dest) {
            continue;
        }
        check_absolute(field, source)?;
        let options = vec!["rbind".into(), "rprivate".into(), file_rw.into()];
        mounts.push(mount(dest, "bind", source, options)?);
    }
    mounts.extend(volumes);
    mounts.sort_by_key(|m| depth(m.destination()));
    // As containerd: a shared volume needs a shared root for its mounts to
    // propagate, a slave one at least a slave root.
    let rootfs_propagation = if shared {
        Some("rshared".to_string())
    } else if slave {
        Some("rslave".to_string())
    } else {
        None
    };
    Ok(Mounts {
        mounts,
        rootfs_propagation,
    })
}

/// One CRI volume, bound from where the daemon made its host path appear
/// in the guest, then a bind for each host mount inside it (see
/// [`MountSource::submounts`]).
fn volume(
    i: usize,
    m: &k8s_cri::v1::Mount,
    source: &MountSource,
) -> Result<(Vec<Mount>, MountPropagation), SpecError> {
    let field = |name: &str| format!("mounts[{i}].{name}");
    let dest = Path::new(&m.container_path);
    if m.container_path.contains('\0')
        || !dest.is_absolute()
        || dest.components().any(|c| c == Component::ParentDir)
    {
        return Err(SpecError::invalid(
            field("container_path"),
            format!(
                "{:?} is not an absolute path without `..`",
                m.container_path
            ),
        ));
    }
    if depth(dest) == 0 {
        return Err(SpecError::invalid(
            field("container_path"),
            "cannot mount over the container's /",
        ));
    }
    check_absolute(&format!("mount_sources[{i}]"), &source.guest_path)?;
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::unsupported(
            field("uidMappings"),
            "idmapped mounts are not supported in a husk microVM yet",
        ));
    }
    if m.selinux_relabel {
        tracing::warn!(
            container_path = m.container_path,
            "selinux_relabel ignored: the guest has no SELinux"
        );
    }
    let propagation = MountPropagation::try_from(m.propagation).map_err(|_| {
        SpecError::invalid(
            field("propagation"),
            format!("unknown propagation {}", m.propagation),
        )
    })?;
    // Image volumes are read-only by definition (the CRI).
    let readonly = m.readonly || m.image.is_some();
    if m.recursive_read_only {
        if !readonly {
            return Err(SpecError::invalid(
                field("recursive_read_only"),
                "needs readonly to be set too",
            ));
        }
        if propagation != MountPropagation::PropagationPrivate {
            return Err(SpecError::invalid(
                field("recursive_read_only"),
                "needs propagation PROPAGATION_PRIVATE",
            ));
        }
    }
    let propagation_option = match propagation {
        MountPropagation::PropagationPrivate => "rprivate",
        MountPropagation::PropagationHostToContainer => "rslave",
        MountPropagation::PropagationBidirectional => "rshared",
    };
    let mut options = vec!["rbind".to_string(), propagation_option.to_string()];
    options.push(if readonly { "ro" } else { "rw" }.to_string());
    if m.recursive_read_only {
        // The agent makes every submount read-only with mount_setattr.
        options.push("rro".to_string());
    }
    let mut mounts = vec![mount(
        &m.container_path,
        "bind",
        &source.guest_path,
        options,
    )?];
    if readonly && !m.recursive_read_only {
        for sub in &source.submounts {
            let relative = &sub.path;
            if relative.as_os_str().is_empty()
                || relative.is_absolute()
                || relative.components().any(|c| c == Component::ParentDir)
            {
                return Err(SpecError::invalid(
                    format!("mount_sources[{i}].submounts"),
                    format!("{relative:?} is not a relative path without `..` (daemon bug)"),
                ));
            }
            let access = if sub.read_only { "ro" } else { "rw" };
            let options = vec!["rbind".into(), propagation_option.into(), access.into()];
            mounts.push(mount(
                &dest.join(relative).to_string_lossy(),
                "bind",
                &Path::new(&source.guest_path)
                    .join(relative)
                    .to_string_lossy(),
                options,
            )?);
        }
    }
    Ok((mounts, propagation))
}

fn mount(dest: &str, typ: &str, source: &str, options: Vec<String>) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options)
        .build()?)
}

fn check_absolute(field: &str, path: &str) -> Result<(), SpecError> {
    let p = Path::new(path);
    if p.is_absolute() && !path.contains('\0') && !p.components().any(|c| c == Component::ParentDir)
    {
        Ok(())
    } else {
        Err(SpecError::invalid(
            field,
            format!("{path:?} is not an absolute guest path without `..`"),
        ))
    }
}

/// Path components below `/` (`.` and repeated slashes do not count).
fn depth(path: &Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[cfg(test)]
mod tests;
