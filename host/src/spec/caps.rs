//! The process's capability sets: containerd's default set, changed by the
//! CRI's add/drop lists, or every capability for a privileged container.

use k8s_cri::v1::LinuxContainerSecurityContext;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::SpecError;

/// containerd's (and Docker's) default set.
const DEFAULT: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the guest kernel (6.1) knows; `ALL` and privileged.
const ALL: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

const ADD: &str = "security_context.capabilities.add_capabilities";
const DROP: &str = "security_context.capabilities.drop_capabilities";
const AMBIENT: &str = "security_context.capabilities.add_ambient_capabilities";

/// A parsed add/drop list: whether it held `ALL`, and the named ones.
struct List {
    all: bool,
    caps: Vec<Capability>,
}

/// The five sets for a process running as `uid`.
///
/// In the order containerd applies them: `ALL` in add, `ALL` in drop, the
/// named adds (and ambient adds, which the CRI puts in every set), the
/// named drops (from every set). A privileged container gets every
/// capability and its lists are ignored (the CRI allows that).
///
/// Root gets the result in bounding, effective and permitted. Any other
/// user gets it in bounding only, and effective/permitted hold just the
/// ambient ones: the kernel clears a non-root process's effective and
/// permitted sets at execve anyway (keeping the ambient ones), and clearing
/// them already before keeps the launch itself (finding and executing the
/// program) from using root powers, as Docker does. Inheritable is the
/// ambient set (the kernel requires it for ambient), empty without one, as
/// containerd does since CVE-2022-24769.
pub(super) fn build(
    sc: &LinuxContainerSecurityContext,
    uid: u32,
) -> Result<LinuxCapabilities, SpecError> {
    let mut set: Capabilities = if sc.privileged {
        ALL.into_iter().collect()
    } else {
        DEFAULT.into_iter().collect()
    };
    let mut ambient = Capabilities::new();
    if let (Some(lists), false) = (&sc.capabilities, sc.privileged) {
        let add = parse(ADD, &lists.add_capabilities)?;
        let drop = parse(DROP, &lists.drop_capabilities)?;
        let amb = parse(AMBIENT, &lists.add_ambient_capabilities)?;
        if add.all {
            set.extend(ALL);
        }
        if drop.all {
            set.clear();
        }
        set.extend(add.caps);
        if amb.all {
            ambient.extend(ALL);
        }
        ambient.extend(amb.caps);
        set.extend(ambient.iter().copied());
        for cap in &drop.caps {
            set.remove(cap);
            ambient.remove(cap);
        }
        if drop.all {
            ambient.retain(|c| set.contains(c));
        }
    }
    let active = if uid == 0 {
        set.clone()
    } else {
        ambient.clone()
    };
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set));
    caps.set_effective(Some(active.clone()));
    caps.set_permitted(Some(active));
    caps.set_inheritable(Some(ambient.clone()));
    caps.set_ambient(Some(ambient));
    Ok(caps)
}

/// Names with or without `CAP_`, in any case; `ALL` alone means all.
fn parse(field: &str, names: &[String]) -> Result<List, SpecError> {
    let mut list = List {
        all: false,
        caps: Vec::new(),
    };
    for (i, name) in names.iter().enumerate() {
        if name.eq_ignore_ascii_case("ALL") {
            list.all = true;
            continue;
        }
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let known = !bare.is_empty()
            && !bare.starts_with("CAP_")
            && bare.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        let cap = known
            .then(|| serde_json::from_value::<Capability>(serde_json::Value::String(bare.into())))
            .and_then(Result::ok)
            .filter(|c| ALL.contains(c))
            .ok_or_else(|| {
                SpecError::invalid(
                    format!("{field}[{i}]"),
                    format!("unknown capability {name:?}"),
                )
            })?;
        list.caps.push(cap);
    }
    Ok(list)
}

#[cfg(test)]
mod tests;
