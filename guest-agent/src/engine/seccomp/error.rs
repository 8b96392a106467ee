//! Why a `linux.seccomp` could not be compiled or installed.

use oci_spec::runtime::LinuxSeccompOperator;

/// Compile errors name the OCI field (`linux.seccomp.syscalls[2].args[0].op`)
/// so the agent can hand them back as InvalidArgument; install errors come
/// from the kernel.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{field}: SCMP_ACT_NOTIFY is not supported (husk runs no seccomp agent)")]
    Notify { field: String },
    #[error("linux.seccomp.listenerPath: seccomp user notification is not supported")]
    Listener,
    #[error("{field}: errno {value} is out of range (0..={max})")]
    Errno { field: String, value: u32, max: u32 },
    #[error("{field}: must name at least one syscall")]
    NoNames { field: String },
    #[error("{field}: argument index {index} is out of range (0..=5)")]
    ArgIndex { field: String, index: usize },
    #[error(
        "{field}: {op} compares one value but valueTwo is set (only SCMP_CMP_MASKED_EQ takes two)"
    )]
    ValueTwo {
        field: String,
        op: LinuxSeccompOperator,
    },
    #[error("{field}: more than {max} {what}")]
    TooMany {
        field: String,
        what: &'static str,
        max: usize,
    },
    #[error(
        "linux.seccomp: the filter needs {len} BPF instructions, the kernel takes at most {max}"
    )]
    TooLarge { len: usize, max: usize },
    #[error("linux.seccomp: generating BPF: {0}")]
    Backend(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
    #[error("installing the seccomp filter: thread {0} cannot be synchronized (TSYNC)")]
    ThreadSync(i64),
}

impl SeccompError {
    /// True for errors in the spec rather than in the agent or the kernel.
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(
            self,
            Self::Backend(_) | Self::Install(_) | Self::ThreadSync(_)
        )
    }
}
