//! A pod's microVM as the daemon sees it: one `husk-vmm` process, its
//! folder under the run dir, and the agent inside it.
//!
//! The VMM is started in its own process group so it outlives a daemon
//! restart (the daemon reattaches by pid and start time); its exit is
//! observed through a pidfd, which works whether or not the daemon is still
//! its parent.

mod layout;
mod mounts;
mod process;

pub use layout::VmLayout;
pub use mounts::{bind_read_only, unmount_under, MountError};
pub use process::{start_time, VmProcess, VmProcessError, VmSpec};
