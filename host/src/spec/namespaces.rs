//! The container's namespaces *inside the pod's VM*. The VM is already the
//! pod's boundary: its network, IPC and UTS namespaces are the pod's
//! (SetupSandbox configured them), so containers share them by not asking
//! for new ones.
//!
//! - mount and cgroup: always new.
//! - pid: `CONTAINER` → new. `POD` and `NODE` → none, so the container
//!   sees the whole VM's processes (the pod's other containers, and
//!   husk-agent as PID 1 where a shared-PID pod elsewhere would see the
//!   pause process). The VM is the node as far as the pod can tell, so
//!   `NODE` (hostPID) never reaches the real host.
//! - ipc and network: `POD`/`NODE` → none (the VM's); `CONTAINER` → new.
//! - uts: none; the VM's hostname is the pod's.
//! - `TARGET` (ephemeral containers sharing another's pid namespace) and
//!   user namespaces with mappings are refused as unsupported.

use k8s_cri::v1::{LinuxContainerSecurityContext, NamespaceMode, NamespaceOption};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::{SpecError, SpecInput};

const FIELD: &str = "security_context.namespace_options";

/// The namespaces list, in a fixed order.
pub(super) fn build(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    // kubelet sets the container's options; the pod's are the fallback a
    // minimal client may rely on.
    let (field, options) = match &sc.namespace_options {
        Some(o) => (FIELD.to_string(), Some(o)),
        None => (
            format!("sandbox_config.linux.{FIELD}"),
            input
                .pod
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.as_ref()),
        ),
    };
    let default = NamespaceOption::default();
    let options = options.unwrap_or(&default);
    if let Some(userns) = &options.userns_options {
        if !userns.uids.is_empty() || !userns.gids.is_empty() {
            return Err(SpecError::unsupported(
                format!("{field}.userns_options"),
                "user namespaces are not supported in a husk microVM yet",
            ));
        }
    }
    let mut list = vec![new(LinuxNamespaceType::Mount)];
    for (name, value, typ) in [
        ("pid", options.pid, LinuxNamespaceType::Pid),
        ("ipc", options.ipc, LinuxNamespaceType::Ipc),
        ("network", options.network, LinuxNamespaceType::Network),
    ] {
        let field = format!("{field}.{name}");
        let mode = NamespaceMode::try_from(value)
            .map_err(|_| SpecError::invalid(&field, format!("unknown namespace mode {value}")))?;
        match mode {
            NamespaceMode::Container => list.push(new(typ)),
            NamespaceMode::Pod | NamespaceMode::Node => {}
            NamespaceMode::Target => {
                return Err(SpecError::unsupported(
                    field,
                    "mode TARGET (another container's namespace) is not supported yet",
                ))
            }
        }
    }
    list.push(new(LinuxNamespaceType::Cgroup));
    Ok(list)
}

fn new(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns
}

#[cfg(test)]
mod tests;
