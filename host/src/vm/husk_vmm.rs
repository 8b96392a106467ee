//! [`VmController`] for husk-vmm: one process per pod, in its own process
//! group so the daemon's signals and exit leave it running, watched by
//! pidfd, its stderr in the pod folder's `vmm.log`.

use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};

use husk_agent_client::AgentAddr;
use husk_proto::AGENT_VSOCK_PORT;

use super::controller::{RunningVm, VmController, VmError, VmSpec};
use super::pidfd::WatchedProcess;
use super::vmm_args::VmmArgs;
use super::{procscan, VmExit, VmHandle, VmLayout, VmProcess};

/// Starts and finds husk-vmm processes.
#[derive(Debug, Clone)]
pub struct HuskVmm {
    binary: PathBuf,
}

impl HuskVmm {
    pub fn new(binary: PathBuf) -> HuskVmm {
        HuskVmm { binary }
    }

    /// The process name the kernel shows for our VMMs (15 bytes kept).
    fn process_name(&self) -> String {
        self.binary
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default()
    }

    fn handle(process: WatchedProcess, layout: &VmLayout) -> VmHandle {
        let agent = AgentAddr::HybridVsock {
            uds: layout.vsock_socket(),
            port: AGENT_VSOCK_PORT,
        };
        VmHandle::watch(process.pid, process.start_time, agent, process)
    }
}

impl VmProcess for WatchedProcess {
    fn kill(&self) {
        WatchedProcess::kill(self)
    }

    fn exited(&self) -> Pin<Box<dyn Future<Output = VmExit> + Send + '_>> {
        Box::pin(WatchedProcess::exited(self))
    }
}

impl VmController for HuskVmm {
    fn start(&self, spec: &VmSpec, layout: &VmLayout) -> Result<VmHandle, VmError> {
        let folder_err = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Folder { path, source }
        };
        std::fs::create_dir_all(layout.shared_dir()).map_err(folder_err(layout.root()))?;
        let _ = std::fs::remove_file(layout.vsock_socket());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.vmm_log())
            .map_err(folder_err(&layout.vmm_log()))?;
        let args = VmmArgs {
            kernel: spec.kernel.clone(),
            initrd: spec.initramfs.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            cid: spec.cid,
            vsock_uds: layout.vsock_socket(),
            console: Some(layout.console_log()),
            shared_dir: Some(layout.shared_dir()),
            cmdline_extra: None,
            log_level: None,
        };
        let child = Command::new(&self.binary)
            .args(args.to_argv())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(folder_err(&layout.vmm_log()))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| VmError::Spawn {
                vmm: self.binary.clone(),
                source,
            })?;
        let pid = child.id() as i32;
        // The pidfd, not the Child, tells when it exits; the zombie is
        // reaped (and its status kept) by the monitor.
        drop(child);
        let process =
            WatchedProcess::child(pid).map_err(|source| VmError::Watch { pid, source })?;
        Ok(Self::handle(process, layout))
    }

    fn reattach(&self, pid: i32, start_time: u64, layout: &VmLayout) -> Option<VmHandle> {
        let process = WatchedProcess::find(pid, start_time)?;
        Some(Self::handle(process, layout))
    }

    fn running(&self, pods_dir: &Path) -> Vec<RunningVm> {
        procscan::vmm_processes(&self.process_name())
            .into_iter()
            .filter_map(|vmm| {
                let socket = PathBuf::from(vmm.flag("--vsock-uds")?);
                let pod_id = socket
                    .strip_prefix(pods_dir)
                    .ok()?
                    .components()
                    .next()?
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                Some(RunningVm {
                    pod_id,
                    pid: vmm.pid,
                    start_time: vmm.start_time?,
                })
            })
            .collect()
    }
}
