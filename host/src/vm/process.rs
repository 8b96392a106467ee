//! Starting, watching and stopping one `husk-vmm` process.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::VmLayout;

#[derive(Debug, thiserror::Error)]
pub enum VmProcessError {
    #[error("cannot prepare the VM folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {vmm}: {source}")]
    Spawn {
        vmm: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch VMM pid {pid}: {source}")]
    Watch { pid: i32, source: std::io::Error },
}

/// What a VM is started with.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub cid: u64,
}

/// A running (or exited) VMM, by pid and start time.
#[derive(Debug)]
pub struct VmProcess {
    pub pid: i32,
    pub start_time: u64,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl VmProcess {
    /// Creates the pod's folder and starts husk-vmm in its own process
    /// group (so the daemon's signals and exit leave it running), with its
    /// stderr in `vmm.log` and the guest console in `console.log`.
    pub fn spawn(spec: &VmSpec, layout: &VmLayout) -> Result<VmProcess, VmProcessError> {
        let folder_err = |path: &Path| {
            let path = path.to_owned();
            move |source| VmProcessError::Folder { path, source }
        };
        std::fs::create_dir_all(layout.shared_dir()).map_err(folder_err(layout.root()))?;
        let _ = std::fs::remove_file(layout.vsock_socket());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.vmm_log())
            .map_err(folder_err(&layout.vmm_log()))?;
        let child = Command::new(&spec.vmm)
            .arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initramfs)
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--memory-mib")
            .arg(spec.memory_mib.to_string())
            .arg("--cid")
            .arg(spec.cid.to_string())
            .arg("--vsock-uds")
            .arg(layout.vsock_socket())
            .arg("--console")
            .arg(layout.console_log())
            .arg("--shared-dir")
            .arg(layout.shared_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(folder_err(&layout.vmm_log()))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| VmProcessError::Spawn {
                vmm: spec.vmm.clone(),
                source,
            })?;
        let pid = child.id() as i32;
        // The pidfd (not the Child) tells us when it exits; the zombie is
        // reaped in `wait_exit`.
        drop(child);
        let start_time = start_time(pid).unwrap_or(0);
        let pidfd = pidfd_open(pid).map_err(|source| VmProcessError::Watch { pid, source })?;
        Ok(VmProcess {
            pid,
            start_time,
            pidfd: Some(pidfd),
        })
    }

    /// Finds a VMM from a record after a daemon restart: `None` when that
    /// process is gone (or its pid now belongs to another process).
    pub fn reattach(pid: i32, recorded_start_time: u64) -> Option<VmProcess> {
        let pidfd = pidfd_open(pid).ok()?;
        // Checked after opening the pidfd: if the start time still matches,
        // the pidfd refers to our VMM and cannot be recycled.
        (start_time(pid)? == recorded_start_time).then_some(VmProcess {
            pid,
            start_time: recorded_start_time,
            pidfd: Some(pidfd),
        })
    }

    /// Waits until the process has exited (and reaps it if it is our
    /// child).
    pub async fn wait_exit(&mut self) {
        if let Some(fd) = &self.pidfd {
            let _ = fd.readable().await;
        }
        self.pidfd = None;
        reap(self.pid);
    }

    /// True while the process runs.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    /// SIGKILLs the VMM through its pidfd (never a recycled pid) and waits
    /// for it, at most `deadline`.
    pub async fn kill(&mut self, deadline: Duration) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.get_ref().as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
        let _ = tokio::time::timeout(deadline, self.wait_exit()).await;
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
    // SAFETY: we own `fd` and it stays open as long as the AsyncFd.
    unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))
}

/// Reaps `pid` if it is our exited child (ECHILD otherwise: someone else's
/// child since a restart, reaped by init).
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
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

    #[test]
    fn start_time_of_this_process_is_stable() {
        let pid = std::process::id() as i32;
        let a = start_time(pid).unwrap();
        assert_eq!(start_time(pid), Some(a));
        assert!(start_time(i32::MAX).is_none());
    }

    #[tokio::test]
    async fn exit_is_seen_and_reattach_refuses_a_dead_or_different_process() {
        let dir = tempfile::tempdir().unwrap();
        let layout = VmLayout::new(dir.path(), "p");
        // A shell script stands in for husk-vmm: it ignores the arguments.
        let fake = dir.path().join("fake-vmm");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let spec = VmSpec {
            vmm: fake,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            vcpus: 1,
            memory_mib: 64,
            cid: 3,
        };
        let mut vm = VmProcess::spawn(&spec, &layout).unwrap();
        assert!(vm.is_alive());
        assert!(VmProcess::reattach(vm.pid, vm.start_time + 1).is_none());
        let again = VmProcess::reattach(vm.pid, vm.start_time).unwrap();
        assert!(again.is_alive());
        vm.kill(Duration::from_secs(5)).await;
        assert!(!vm.is_alive());
        assert!(VmProcess::reattach(vm.pid, vm.start_time).is_none());
    }
}
