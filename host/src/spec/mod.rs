//! CRI → what husk-agent runs inside the pod's VM: a `ContainerConfig`
//! becomes an OCI runtime spec ([`build`]), a `PodSandboxConfig` the
//! agent's sandbox set-up ([`sandbox_config`]), an exec'd command a
//! process derived from the container's ([`exec_process`]).
//!
//! The translation follows containerd's where the CRI leaves room, and
//! differs where a VM per pod changes the picture: no network, IPC or UTS
//! namespaces (the VM's are the pod's; see [`namespaces`]), no hostname
//! (it would be set on the VM's shared UTS namespace; SetupSandbox already
//! did), no host devices, and a short seccomp denylist (see [`seccomp`]).
//! Each part lives in its own file; [`build`] puts them together.
//!
//! Paths in the result are guest paths: bind sources are where the daemon
//! made a host path or pod file appear inside the VM.

mod annotations;
mod caps;
mod error;
mod exec;
mod mounts;
mod namespaces;
mod passwd;
mod paths;
mod process;
mod resources;
mod sandbox;
mod seccomp;
mod user;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod tests;

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig};
use oci_spec::runtime::{Linux, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User};

pub use error::SpecError;
pub use exec::exec_process;
pub use resources::{linux_resources, resources_json};
pub use sandbox::sandbox_config;

use crate::image::ImageConfig;
use crate::state::SandboxFiles;

/// The OCI version the spec claims.
const OCI_VERSION: &str = "1.0.2";
/// containerd's default open-files limit.
const NOFILE: u64 = 1_048_576;

/// Where a CRI volume appears in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountSource {
    /// The guest path of the volume's host path.
    pub guest_path: String,
    /// Host mounts inside a read-only (not recursively read-only) volume:
    /// virtio-fs shows the guest no mount there, so each gets a bind of
    /// its own in the container, or the volume's read-only flag would
    /// cover it too.
    pub submounts: Vec<Submount>,
}

/// A host mount inside a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submount {
    /// Relative to the volume's root.
    pub path: std::path::PathBuf,
    /// The host mount's own read-only flag (the host enforces it anyway).
    pub read_only: bool,
}

/// Everything [`build`] needs about one container.
#[derive(Debug, Clone, Copy)]
pub struct SpecInput<'a> {
    pub pod: &'a PodSandboxConfig,
    pub container: &'a ContainerConfig,
    /// The image's run defaults.
    pub image: &'a ImageConfig,
    /// Guest paths of the pod's own files (SetupSandbox wrote them).
    pub sandbox_files: &'a SandboxFiles,
    /// Where the daemon made each `container.mounts` entry appear in the
    /// VM, same index.
    pub mount_sources: &'a [MountSource],
    /// The image's `/etc/passwd`, if it has one (user names).
    pub image_passwd: Option<&'a str>,
    /// The image's `/etc/group`, if it has one (group names, a user's
    /// supplementary groups).
    pub image_group: Option<&'a str>,
}

/// Translates one container. Purely a function of its input except for a
/// Localhost seccomp profile, which is read from the host's filesystem.
/// Every error names the CRI field at fault.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let no_context = LinuxContainerSecurityContext::default();
    let sc = input
        .container
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&no_context);
    check_unsupported(input, sc)?;

    let identity = user::resolve(input, sc)?;
    let mut user = User::default();
    user.set_uid(identity.uid);
    user.set_gid(identity.gid);
    user.set_additional_gids(Some(identity.additional_gids.clone()));

    let (resources, oom_score_adj) = resources::build(input)?;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(NOFILE)
        .hard(NOFILE)
        .build()?;

    let mut process = Process::default();
    process.set_terminal(Some(input.container.tty));
    process.set_user(user);
    process.set_args(Some(process::args(input)?));
    process.set_env(Some(process::env(input, &identity.home)?));
    process.set_cwd(process::cwd(input)?);
    process.set_capabilities(Some(caps::build(sc, identity.uid)?));
    process.set_rlimits(Some(vec![nofile]));
    process.set_no_new_privileges(Some(sc.no_new_privs));
    process.set_oom_score_adj(Some(oom_score_adj));
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    let mounts = mounts::build(input, sc)?;
    let (masked, readonly) = paths::build(sc);
    let sysctls = input
        .pod
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .filter(|s| !s.is_empty());

    let mut linux = Linux::default();
    linux.set_namespaces(Some(namespaces::build(input, sc)?));
    linux.set_resources(resources);
    linux.set_sysctl(sysctls);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_seccomp(seccomp::build(sc)?);
    linux.set_rootfs_propagation(mounts.rootfs_propagation);
    linux.set_devices(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_cgroups_path(None);

    let mut root = Root::default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(sc.readonly_rootfs));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(None);
    spec.set_domainname(None);
    spec.set_mounts(Some(mounts.mounts));
    spec.set_hooks(None);
    spec.set_annotations(Some(annotations::build(input)));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Requests a microVM cannot honour are refused. Security modules the
/// guest does not have are ignored (refusing would fail every pod on an
/// AppArmor node, where kubelet asks for RuntimeDefault), with a warning
/// when a specific profile or label was asked for.
// The deprecated string fields are still what older clients send.
#[allow(deprecated)]
fn check_unsupported(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
) -> Result<(), SpecError> {
    if !input.container.devices.is_empty() {
        return Err(SpecError::unsupported(
            "devices",
            "host devices cannot be passed into a husk microVM yet",
        ));
    }
    if !input.container.cdi_devices.is_empty() {
        return Err(SpecError::unsupported(
            "CDI_devices",
            "CDI devices cannot be passed into a husk microVM yet",
        ));
    }
    use k8s_cri::v1::security_profile::ProfileType;
    let apparmor_localhost = sc
        .apparmor
        .as_ref()
        .is_some_and(|p| p.profile_type == ProfileType::Localhost as i32)
        || sc.apparmor_profile.starts_with("localhost/");
    if apparmor_localhost {
        tracing::warn!("apparmor profile ignored: the guest has no AppArmor");
    }
    let selinux = sc.selinux_options.as_ref().is_some_and(|o| {
        !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
    });
    if selinux {
        tracing::warn!("selinux_options ignored: the guest has no SELinux");
    }
    Ok(())
}
