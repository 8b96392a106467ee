//! Outside a VM the agent makes its own sandbox: private UTS, IPC, network
//! and mount namespaces, so SetupSandbox's hostname and sysctls and the
//! containers' shared namespaces never touch the host. In a VM the guest
//! itself is the sandbox and this is not called.

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Enters private namespaces, loudly continuing without them when that is
/// not allowed (not root): Health and the file calls still work then.
pub fn enter_private() {
    let flags = CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWNS;
    if let Err(e) = unshare(flags) {
        eprintln!(
            "husk-agent: WARNING: cannot create the sandbox namespaces ({e}); \
             containers would share the host's, so SetupSandbox and containers may fail"
        );
        return;
    }
    // Mounts made in here must not propagate back to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    ) {
        eprintln!("husk-agent: WARNING: cannot make / a slave mount: {e}");
    }
}
