//! A container's filesystem view: checking the spec's filesystem fields
//! ([`validate`]), building the root from image layers and the spec's
//! mounts inside the container's mount namespace ([`enter`]), and the
//! last restrictions before the container process runs ([`finalize`]).
//!
//! Honoured: `mounts` (bind/rbind, tmpfs, proc, sysfs, devpts, mqueue,
//! cgroup/cgroup2), `root.readonly`, `linux.rootfsPropagation`,
//! `linux.maskedPaths`, `linux.readonlyPaths`, `linux.devices`.

mod devices;
mod error;
mod mounts;
mod options;
mod overlay;
mod paths;
mod secure_path;
mod switch_root;
mod sys;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;

pub use error::RootfsError;

use overlay::OverlayApi;
use switch_root::SwitchRoot;

/// Where a container's root comes from; prepared by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsPlan {
    /// An empty directory that becomes the container's "/".
    pub rootfs: PathBuf,
    /// Image layers, lowest first; absolute, used read-only.
    pub lower: Vec<PathBuf>,
    /// The writable layer (exists, empty at create). Empty path: none, the
    /// root is read-only.
    pub upper: PathBuf,
    /// Overlayfs's work directory, on the same filesystem as `upper`.
    pub work: PathBuf,
    /// The container's cgroup v2 directory, shown at `cgroup`/`cgroup2`
    /// mounts; `None` on a cgroup v1 host.
    pub cgroup_dir: Option<PathBuf>,
    /// Canonical folders the spec's bind sources must resolve under. Checked
    /// again on the source as opened for the mount, so a path swapped for a
    /// symlink after `validate` (another container writing the shared
    /// volume) cannot lead elsewhere.
    pub bind_roots: Vec<PathBuf>,
}

/// Checks `mounts`, `linux.rootfsPropagation`, `linux.maskedPaths`,
/// `linux.readonlyPaths` and `linux.devices` in the agent, before any
/// process exists, so a bad spec fails the create call instead of leaving
/// a half-built container. Bind sources must lie inside one of
/// `allowed_roots` both as written and with symlinks resolved, and must
/// exist. Every refusal is [`RootfsError::Invalid`], naming the field.
pub fn validate(spec: &Spec, allowed_roots: &[PathBuf]) -> Result<(), RootfsError> {
    validate::validate_spec(spec, allowed_roots)
}

/// Builds the container's root and moves into it. Runs in the container's
/// init: single-threaded, privileged, already in its own new mount
/// namespace.
///
/// In order: propagation of "/", the overlay at `plan.rootfs`, the spec's
/// mounts, the default /dev content, `linux.devices`, pivot_root.
///
/// With `linux.rootfsPropagation` unset "/" becomes rprivate, where runc
/// uses rslave: in the guest nothing outside a container mounts anything a
/// container should see (the agent's mounts are private, as the kernel
/// makes them without systemd), so rslave would behave the same while
/// rprivate states it and also rules out propagation back to the agent.
pub fn enter(spec: &Spec, plan: &RootfsPlan) -> Result<(), RootfsError> {
    enter_with(spec, plan, SwitchRoot::Auto, OverlayApi::Auto)
}

/// [`enter`] with the fallbacks selectable, so tests reach them on a host
/// that would not need them.
fn enter_with(
    spec: &Spec,
    plan: &RootfsPlan,
    switch: SwitchRoot,
    api: OverlayApi,
) -> Result<(), RootfsError> {
    let propagation = switch_root::root_propagation(spec)?;
    let first = propagation.unwrap_or(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    switch_root::prepare(first, &plan.rootfs)?;
    overlay::mount_rootfs(plan, api)?;
    let root = open(
        &plan.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(RootfsError::sys("plan.rootfs", "open", &plan.rootfs))?;
    mounts::mount_all(&root, spec, plan)?;
    if devices::wants_default_dev(spec) {
        devices::default_dev(&root)?;
    }
    devices::create_devices(&root, spec)?;
    drop(root);
    switch_root::switch(&plan.rootfs, switch)?;
    // Again after the switch, now for the new "/" itself (as runc does).
    if let Some(flags) = propagation {
        sys::set_propagation(Path::new("/"), flags).map_err(RootfsError::sys(
            "linux.rootfsPropagation",
            "set propagation of",
            "/",
        ))?;
    }
    Ok(())
}

/// The last filesystem changes, after [`enter`] and still privileged:
/// `linux.maskedPaths` (files under /dev/null, directories under an empty
/// read-only tmpfs, missing ones ignored), `linux.readonlyPaths` (missing
/// ones ignored), then `root.readonly`.
pub fn finalize(spec: &Spec) -> Result<(), RootfsError> {
    paths::finalize(spec)
}
