//! A process watched through a pidfd: its exit is seen whether or not the
//! daemon is still its parent, a signal never reaches a recycled pid, and
//! when it is our child its exit status is kept.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::VmExit;

/// A running (or exited, not yet reaped) process, by pid and start time.
#[derive(Debug)]
pub struct WatchedProcess {
    pub pid: i32,
    pub start_time: u64,
    pidfd: AsyncFd<OwnedFd>,
}

impl WatchedProcess {
    /// Watches our child `pid` that was just spawned.
    pub fn child(pid: i32) -> std::io::Result<WatchedProcess> {
        let pidfd = pidfd_open(pid)?;
        let start_time = start_time(pid).unwrap_or(0);
        Ok(WatchedProcess {
            pid,
            start_time,
            pidfd,
        })
    }

    /// Finds a process from a record: `None` when it is gone or its pid
    /// now belongs to another process.
    pub fn find(pid: i32, recorded_start_time: u64) -> Option<WatchedProcess> {
        let pidfd = pidfd_open(pid).ok()?;
        // Checked after opening the pidfd: if the start time still matches,
        // the pidfd refers to that process and cannot be recycled.
        (start_time(pid)? == recorded_start_time && !is_zombie(pid)).then_some(WatchedProcess {
            pid,
            start_time: recorded_start_time,
            pidfd,
        })
    }

    /// SIGKILL through the pidfd.
    pub fn kill(&self) {
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// Waits until the process has exited; reaps it and says how when it
    /// is our child.
    pub async fn exited(&self) -> VmExit {
        // A pidfd becomes readable when its process exits.
        let _ = self.pidfd.readable().await;
        reap(self.pid)
    }
}

fn reap(pid: i32) -> VmExit {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => VmExit::Exited(code),
        Ok(WaitStatus::Signaled(_, signal, core_dumped)) => VmExit::Signaled {
            signal: signal as i32,
            core_dumped,
        },
        // ECHILD: not ours since a restart (init reaps it).
        _ => VmExit::Unobserved,
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: we own `fd`, and it stays open as long as the AsyncFd.
    unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn start_time_of_this_process_is_stable() {
        let pid = std::process::id() as i32;
        let a = start_time(pid).unwrap();
        assert_eq!(start_time(pid), Some(a));
        assert!(start_time(i32::MAX).is_none());
    }

    /// A child reaped by the watcher, as the VMM's is (never by `Child`).
    #[allow(clippy::zombie_processes)]
    fn spawn(script: &str) -> WatchedProcess {
        let child = Command::new("/bin/sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        WatchedProcess::child(child.id() as i32).unwrap()
    }

    #[tokio::test]
    async fn a_child_exit_status_is_kept() {
        assert_eq!(spawn("exit 3").exited().await, VmExit::Exited(3));
        let segv = spawn("kill -SEGV $$").exited().await;
        assert!(
            matches!(segv, VmExit::Signaled { signal, .. } if signal == libc::SIGSEGV),
            "{segv:?}"
        );
    }

    #[tokio::test]
    async fn kill_is_seen_and_find_refuses_a_dead_or_different_process() {
        let vm = spawn("exec sleep 30");
        assert!(WatchedProcess::find(vm.pid, vm.start_time + 1).is_none());
        assert!(WatchedProcess::find(vm.pid, vm.start_time).is_some());
        vm.kill();
        assert_eq!(
            vm.exited().await,
            VmExit::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            }
        );
        assert!(WatchedProcess::find(vm.pid, vm.start_time).is_none());
    }
}
