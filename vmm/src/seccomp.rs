//! The VMM's seccomp filter, installed on every thread once the vCPUs run.
//!
//! A deny list: the syscalls a VMM never needs after setup and that a
//! guest who took over the process would reach for first — running or
//! creating processes, debugging others, changing mounts or namespaces,
//! loading kernel code, touching the host's clock or swap. Any of them
//! kills the process (SIGSYS). An allow list would be tighter, but
//! fuse-backend-rs's passthrough uses much of the file API on the guest's
//! behalf; that is the next step, with the jailer.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// Killed outright whatever their arguments.
const DENIED: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_acct,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_personality,
    libc::SYS_uselib,
    libc::SYS_vhangup,
];

/// The kill-on-match filter: the syscalls above, and `clone` without
/// CLONE_THREAD (how glibc forks).
pub fn deny_filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let new_process = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![new_process])?]);
    compile(rules, SeccompAction::KillProcess)
}

/// `clone3` hides its flags behind a pointer, so it cannot be filtered by
/// flags: refuse it with ENOSYS, which makes glibc fall back to `clone`.
pub fn clone3_filter() -> Result<BpfProgram, Error> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    compile(rules, SeccompAction::Errno(libc::ENOSYS as u32))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
) -> Result<BpfProgram, Error> {
    let arch = std::env::consts::ARCH
        .try_into()
        .expect("husk-vmm is built for x86_64");
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, arch)?;
    Ok(filter.try_into()?)
}

/// Installs both filters on every thread of the process (TSYNC). They
/// cannot be removed afterwards.
pub fn install() -> Result<(), Error> {
    seccompiler::apply_filter_all_threads(&clone3_filter()?)?;
    seccompiler::apply_filter_all_threads(&deny_filter()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_to_bpf() {
        let deny = deny_filter().unwrap();
        // At least one comparison per denied syscall.
        assert!(deny.len() > DENIED.len(), "{} instructions", deny.len());
        assert!(!clone3_filter().unwrap().is_empty());
    }
}
