//! A pod's VM as the daemon sees it: started, found again after a restart
//! and listed by a [`VmController`] (husk-vmm's is [`HuskVmm`]), watched
//! through a [`VmHandle`] that tells how it ended ([`VmExit`]), with its
//! folder under the run dir ([`VmLayout`]) and the bind mounts that share
//! image layers and host paths with the guest ([`mounts`]).
//!
//! This room knows processes, folders and mounts; it never calls into the
//! runtime. What a pod needs on the host besides its VM (network
//! namespace, tap) is meant to be started here too, behind the same seam.

mod controller;
mod exit;
mod handle;
mod husk_vmm;
mod layout;
mod logs;
mod mounts;
mod pidfd;
pub mod procscan;
mod vmm_args;

#[cfg(test)]
pub mod fake;

pub use controller::{RunningVm, VmController, VmError, VmSpec};
pub use exit::VmExit;
pub use handle::{wait_exit, VmHandle, VmProcess};
pub use husk_vmm::HuskVmm;
pub use layout::VmLayout;
pub use logs::{last_lines, vm_logs, TAIL_LINES};
pub use mounts::{bind, mounts_below, unmount_under, Access, MountError, MountPoint};
pub use vmm_args::VmmArgs;
