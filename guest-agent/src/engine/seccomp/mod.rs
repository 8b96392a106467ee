//! OCI `linux.seccomp` as a classic-BPF program for the container's init.
//!
//! The agent compiles the spec once to validate it (errors name the OCI
//! field); the init compiles it again and installs it right before exec.
//! Written on seccompiler rather than libseccomp: no C library in the
//! agent. How several OCI actions fit in one program: see [`link`].

mod error;
mod link;
mod spec;

#[cfg(test)]
mod install_tests;
#[cfg(test)]
mod tests;

use oci_spec::runtime::LinuxSeccomp;
use seccompiler::BpfProgram;

pub use self::error::SeccompError;

// The kernel reads our instructions as its `struct sock_filter`.
const _: () = assert!(
    std::mem::size_of::<seccompiler::sock_filter>() == std::mem::size_of::<libc::sock_filter>()
        && std::mem::align_of::<seccompiler::sock_filter>()
            == std::mem::align_of::<libc::sock_filter>()
);

/// A compiled `linux.seccomp`: one BPF program (or none, when the spec
/// allows everything) and the seccomp(2) flags to install it with.
#[derive(Clone, Debug)]
pub struct SeccompProgram {
    bpf: BpfProgram,
    flags: libc::c_ulong,
    warnings: Vec<String>,
}

/// Checks and compiles the spec's seccomp section for x86_64.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let parsed = spec::parse(seccomp)?;
    let bpf = link::link(parsed.groups, &parsed.default)?;
    Ok(SeccompProgram {
        bpf,
        flags: parsed.flags,
        warnings: parsed.warnings,
    })
}

impl SeccompProgram {
    /// Installs the program on the calling thread (all threads with TSYNC)
    /// with seccomp(2). It does not set no_new_privs: the caller decides;
    /// without it the kernel wants CAP_SYS_ADMIN, which the init still has.
    /// Allocates nothing.
    pub fn install(&self) -> Result<(), SeccompError> {
        if self.bpf.is_empty() {
            return Ok(());
        }
        let prog = libc::sock_fprog {
            // compile() kept the length within BPF_MAXINSNS (4096).
            len: self.bpf.len() as libc::c_ushort,
            filter: self.bpf.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: `prog` points at `len` initialised instructions laid out
        // as the kernel's sock_filter (checked above); the kernel copies
        // them and writes nothing back.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            // With TSYNC, a thread that cannot follow is reported by id.
            tid if rc > 0 => Err(SeccompError::ThreadSync(tid)),
            _ => Err(SeccompError::Install(std::io::Error::last_os_error())),
        }
    }

    /// What compile() skipped or ignored (unknown syscall names, foreign
    /// architectures, unusable flags), for the agent to log once: printing
    /// here would land in the container's stderr when the init compiles.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}
