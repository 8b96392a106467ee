//! Orderly power-off of the guest: every other process gets SIGTERM, then
//! SIGKILL, filesystems are flushed and unmounted, then the VM is reset.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};

use crate::mountinfo;

/// How long processes get to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long we wait for SIGKILLed processes to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// The guest's virtio-vsock driver hands written packets to the device from
/// a kernel worker, after write()/close() returned. Resetting at once could
/// drop the Shutdown answer we just wrote; idling this long lets it go out.
const VSOCK_SETTLE: Duration = Duration::from_millis(100);

/// Why the guest could not be powered off.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("refusing to power off: not PID 1 (would signal every process of the host)")]
    NotPid1,
    #[error("reboot(RB_AUTOBOOT) failed: {0}")]
    Reboot(#[source] nix::Error),
}

/// Stops everything and resets the VM; only returns on failure. The reaper
/// must be running so killed processes are collected.
pub async fn power_off() -> Result<Infallible, PowerError> {
    // kill(-1) from anyone but PID 1 hits every process the user may signal.
    if !super::is_pid1() {
        return Err(PowerError::NotPid1);
    }
    tokio::time::sleep(VSOCK_SETTLE).await;
    sync();
    terminate_all(Signal::SIGTERM, TERM_GRACE).await;
    terminate_all(Signal::SIGKILL, KILL_GRACE).await;
    sync();
    unmount_all();
    sync();
    super::reset().map_err(PowerError::Reboot)
}

/// Sends `signal` to every process but us and waits until none is left (or
/// `grace` passed). From PID 1, `kill(-1, 0)` fails with ESRCH exactly when
/// no other process exists; zombies count until the reaper collects them.
async fn terminate_all(signal: Signal, grace: Duration) {
    let all = Pid::from_raw(-1);
    if kill(all, signal) == Err(Errno::ESRCH) {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if kill(all, None) == Err(Errno::ESRCH) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Unmounts everything but `/`, deepest and newest first. What stays busy
/// (the console keeps /dev open) is remounted read-only, which still flushes
/// it. Failures are ignored: the reset comes next either way.
fn unmount_all() {
    let Ok(mounts) = mountinfo::read("/proc/self/mountinfo") else {
        return;
    };
    for target in mounts.iter().rev().map(|m| &m.mount_point) {
        if target.as_os_str() == "/" {
            continue;
        }
        if umount2(target, MntFlags::empty()).is_err() {
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            let _ = mount(None::<&str>, target, None::<&str>, flags, None::<&str>);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_to_power_off_unless_pid1() {
        assert!(matches!(power_off().await, Err(PowerError::NotPid1)));
    }
}
