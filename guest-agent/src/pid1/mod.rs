//! What only PID 1 of a guest does: set up the filesystems and console the
//! kernel leaves to init, and never exit (an exiting PID 1 panics the kernel).

mod console;
mod mounts;
mod power;
mod shared;

use std::convert::Infallible;
use std::fmt::Display;
use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};

pub use power::{power_off, PowerError};

/// Why preparing the guest for userspace failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
}

/// True when the agent is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Mounts the API filesystems, points stdio at the console, then mounts
/// the shared folder if the VMM gives us one (after the console, so a
/// failure there is reported). Runs before any thread exists, so a failure
/// here cannot race anything.
pub fn setup() -> Result<(), SetupError> {
    mounts::mount_all()?;
    console::attach()?;
    shared::mount_if_present();
    Ok(())
}

/// Reports `err` on the console and resets the VM. The kernel command line
/// decides what a reset does (`reboot=k`: i8042 reset, our VMM exits;
/// `reboot=t`: triple fault, QEMU with `-no-reboot` exits). Never returns:
/// returning from PID 1 would panic the kernel with a less useful message.
pub fn fatal(err: impl Display) -> ! {
    eprintln!("husk-agent fatal: {err}");
    nix::unistd::sync();
    let Err(e) = reset();
    eprintln!("husk-agent: reboot failed: {e}; halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `reboot(RB_AUTOBOOT)`; only returns on failure.
fn reset() -> Result<Infallible, nix::Error> {
    reboot(RebootMode::RB_AUTOBOOT)
}
