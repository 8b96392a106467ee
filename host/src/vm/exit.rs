//! How a VMM process ended, as the kernel told its parent.

use std::fmt;

/// The end of a pod's VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// It called exit(2) with this status (husk-vmm: 0 the guest stopped,
    /// 1 the VM could not be set up, 2 it failed while running).
    Exited(i32),
    /// A signal ended it: SIGKILL from us or the OOM killer, SIGSYS from
    /// its seccomp filter, SIGSEGV or SIGABRT from a bug.
    Signaled { signal: i32, core_dumped: bool },
    /// It ended while it was not our child (reattached after a daemon
    /// restart): its status went to whoever reaped it.
    Unobserved,
}

impl VmExit {
    /// A clean stop: the guest powered off or reset.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::Exited(0))
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Exited(code) => write!(f, "exited with status {code}"),
            VmExit::Signaled {
                signal,
                core_dumped,
            } => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                write!(f, "was killed by {name} ({signal})")?;
                if *core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            VmExit::Unobserved => f.write_str(
                "ended while husk was not its parent (its exit status was not observed)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_say_how() {
        assert_eq!(VmExit::Exited(2).to_string(), "exited with status 2");
        let sys = VmExit::Signaled {
            signal: libc::SIGSYS,
            core_dumped: false,
        };
        assert_eq!(sys.to_string(), "was killed by SIGSYS (31)");
        let segv = VmExit::Signaled {
            signal: libc::SIGSEGV,
            core_dumped: true,
        };
        assert_eq!(segv.to_string(), "was killed by SIGSEGV (11), core dumped");
        assert!(VmExit::Exited(0).is_clean());
        assert!(!VmExit::Exited(1).is_clean());
        assert!(VmExit::Unobserved.to_string().contains("not observed"));
    }
}
