//! `linux.seccomp` from the CRI's seccomp profile.
//!
//! - Unconfined, or no profile at all (the CRI's default): none.
//! - RuntimeDefault: [`runtime_default`], ours.
//! - Localhost: the OCI `LinuxSeccomp` JSON file at `localhost_ref`, read
//!   on the host when the container is created.
//!
//! A privileged container gets none whatever it asks (the CRI allows that).

use std::path::{Path, PathBuf};

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::LinuxContainerSecurityContext;
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSyscall};

use super::SpecError;

const FIELD: &str = "security_context.seccomp";
const LOCALHOST_REF: &str = "security_context.seccomp.localhost_ref";
const PROFILE_PATH: &str = "security_context.seccomp_profile_path";

/// Syscalls RuntimeDefault refuses with EPERM; everything else is allowed.
///
/// A short denylist, far smaller than containerd's allowlist profile:
/// within its own VM a container already cannot reach the host kernel,
/// and most of what containerd's profile blocks is also gated by
/// capabilities the default set lacks. These are the guest-kernel
/// interfaces that are dangerous or not namespaced even so: loading
/// kernels and modules, handle-based opens that escape a mount namespace,
/// BPF and perf (large attack surface), userfaultfd (exploit primitive),
/// the kernel keyring (not namespaced), accounting, swap, reboot, the
/// kernel log, raw I/O ports and the clock. x86_64 names only: the
/// agent's filter is x86_64-only and warns about names it does not know.
pub(super) const DENIED: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "add_key",
    "request_key",
    "keyctl",
    "acct",
    "lookup_dcookie",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "iopl",
    "ioperm",
    "uselib",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
];

/// The RuntimeDefault profile. Only x86_64 is listed: the agent's filter
/// kills every 32-bit (x86, x32) syscall whatever the spec lists, and
/// warns about each other architecture named.
pub(super) fn runtime_default() -> LinuxSeccomp {
    let mut deny = LinuxSyscall::default();
    deny.set_names(DENIED.iter().map(|s| s.to_string()).collect());
    deny.set_action(LinuxSeccompAction::ScmpActErrno);
    deny.set_errno_ret(Some(libc::EPERM as u32));
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActAllow);
    seccomp.set_architectures(Some(vec![Arch::ScmpArchX86_64]));
    seccomp.set_syscalls(Some(vec![deny]));
    seccomp
}

/// What the security context asks for, in the newer `seccomp` field or
/// the deprecated `seccomp_profile_path` string (older clients send it).
#[allow(deprecated)]
pub(super) fn build(sc: &LinuxContainerSecurityContext) -> Result<Option<LinuxSeccomp>, SpecError> {
    if sc.privileged {
        return Ok(None);
    }
    if let Some(profile) = &sc.seccomp {
        let kind = ProfileType::try_from(profile.profile_type).map_err(|_| {
            SpecError::invalid(
                format!("{FIELD}.profile_type"),
                format!("unknown profile type {}", profile.profile_type),
            )
        })?;
        return match kind {
            ProfileType::Unconfined => Ok(None),
            ProfileType::RuntimeDefault => Ok(Some(runtime_default())),
            ProfileType::Localhost => localhost(LOCALHOST_REF, &profile.localhost_ref).map(Some),
        };
    }
    match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(runtime_default())),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(PROFILE_PATH, path).map(Some),
            None => Err(SpecError::invalid(
                PROFILE_PATH,
                format!("{other:?} is not runtime/default, unconfined or localhost/<path>"),
            )),
        },
    }
}

/// Reads a profile installed on the node.
fn localhost(field: &'static str, path: &str) -> Result<LinuxSeccomp, SpecError> {
    if !Path::new(path).is_absolute() {
        return Err(SpecError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    let path = PathBuf::from(path);
    let text = std::fs::read(&path).map_err(|source| SpecError::SeccompRead {
        field,
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| SpecError::SeccompParse {
        field,
        path,
        source,
    })
}

#[cfg(test)]
mod tests;
