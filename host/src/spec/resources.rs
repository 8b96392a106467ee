//! The container's cgroup limits inside the VM, from the CRI's
//! `linux.resources`. Zero means "not specified" throughout the CRI.
//!
//! Not passed on: hugepage limits (the guest has no hugetlb cgroup; its
//! memory is the VM's, sized from the pod's limits) and pids (the CRI has
//! no per-container pids limit; kubelet puts the pod's on the pod cgroup,
//! which here is the VM itself).

use k8s_cri::v1::LinuxContainerResources;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use super::{SpecError, SpecInput};

const FIELD: &str = "linux.resources";

/// The resources (`None` when nothing is limited) and the process's
/// `oomScoreAdj` (kubelet's value; 0 when absent, so a container never
/// inherits the agent's own score).
pub(super) fn build(input: &SpecInput) -> Result<(Option<LinuxResources>, i32), SpecError> {
    let Some(r) = input
        .container
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
    else {
        return Ok((None, 0));
    };
    Ok((linux_resources(r)?, oom_score_adj(r.oom_score_adj)?))
}

/// The OCI JSON of new limits, for UpdateContainerResources (the agent
/// parses it as `LinuxResources`); `{}` when nothing is limited.
pub fn resources_json(r: &LinuxContainerResources) -> Result<String, SpecError> {
    let resources = linux_resources(r)?.unwrap_or_default();
    Ok(serde_json::to_string(&resources)?)
}

/// The OCI limits of CRI resources, `None` when nothing is limited.
pub fn linux_resources(r: &LinuxContainerResources) -> Result<Option<LinuxResources>, SpecError> {
    if !r.hugepage_limits.is_empty() {
        tracing::debug!("hugepage limits ignored: the guest has no hugetlb cgroup");
    }
    let mut resources = LinuxResources::default();
    let mut any = false;
    if let Some(cpu) = cpu(r)? {
        resources.set_cpu(Some(cpu));
        any = true;
    }
    if let Some(memory) = memory(r)? {
        resources.set_memory(Some(memory));
        any = true;
    }
    if !r.unified.is_empty() {
        resources.set_unified(Some(r.unified.clone()));
        any = true;
    }
    Ok(any.then_some(resources))
}

fn cpu(r: &LinuxContainerResources) -> Result<Option<LinuxCpu>, SpecError> {
    let mut cpu = LinuxCpu::default();
    let mut any = false;
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(non_negative("cpu_shares", r.cpu_shares)?));
        any = true;
    }
    // A negative quota is cgroup v1's "unlimited"; pass it on as such.
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
        any = true;
    }
    if r.cpu_period != 0 {
        cpu.set_period(Some(non_negative("cpu_period", r.cpu_period)?));
        any = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        any = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        any = true;
    }
    Ok(any.then_some(cpu))
}

fn memory(r: &LinuxContainerResources) -> Result<Option<LinuxMemory>, SpecError> {
    let mut memory = LinuxMemory::default();
    let mut any = false;
    if r.memory_limit_in_bytes != 0 {
        non_negative("memory_limit_in_bytes", r.memory_limit_in_bytes)?;
        memory.set_limit(Some(r.memory_limit_in_bytes));
        any = true;
    }
    // -1 is "unlimited swap"; other negative values mean nothing.
    if r.memory_swap_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes == -1 {
        memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        any = true;
    }
    Ok(any.then_some(memory))
}

fn oom_score_adj(value: i64) -> Result<i32, SpecError> {
    if (-1000..=1000).contains(&value) {
        Ok(value as i32)
    } else {
        Err(SpecError::invalid(
            format!("{FIELD}.oom_score_adj"),
            format!("{value} is out of range -1000..=1000"),
        ))
    }
}

fn non_negative(name: &str, value: i64) -> Result<u64, SpecError> {
    u64::try_from(value)
        .map_err(|_| SpecError::invalid(format!("{FIELD}.{name}"), format!("{value} is negative")))
}

#[cfg(test)]
mod tests;
