//! A [`VmController`] for the runtime's tests: each "VM" is an in-memory
//! agent ([`FakeAgent`]) served on a unix socket in the pod's folder, and a
//! pretend process that ends when the guest is shut down, when it is
//! killed, or when a test crashes it. No KVM, no husk-vmm.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use husk_agent_client::fake::{FakeAgent, FakeServer};
use husk_agent_client::AgentAddr;
use tokio::sync::watch;

use super::controller::{RunningVm, VmController, VmError, VmSpec};
use super::{VmExit, VmHandle, VmLayout, VmProcess};

/// One pretend VM.
#[derive(Clone)]
pub struct FakeVm {
    pub pod_id: String,
    pub pid: i32,
    pub spec: VmSpec,
    pub agent: FakeAgent,
    exit: watch::Sender<Option<VmExit>>,
    server: Arc<Mutex<Option<FakeServer>>>,
}

impl FakeVm {
    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Ends the VM as if its process died `how`.
    pub fn crash(&self, how: VmExit) {
        self.end(how);
    }

    fn end(&self, how: VmExit) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.stop();
        }
        self.exit.send_if_modified(|exit| {
            let first = exit.is_none();
            if first {
                *exit = Some(how);
            }
            first
        });
    }
}

struct FakeProcess(FakeVm);

impl VmProcess for FakeProcess {
    fn kill(&self) {
        self.0.end(VmExit::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        });
    }

    fn exited(&self) -> Pin<Box<dyn Future<Output = VmExit> + Send + '_>> {
        let mut exit = self.0.exit.subscribe();
        Box::pin(async move {
            match exit.wait_for(Option::is_some).await {
                Ok(value) => value.expect("checked"),
                Err(_) => VmExit::Unobserved,
            }
        })
    }
}

/// Every pretend VM ever started, by pod.
#[derive(Clone, Default)]
pub struct FakeVms {
    vms: Arc<Mutex<HashMap<String, FakeVm>>>,
    /// When set, `start` fails like a missing binary.
    fail_start: Arc<Mutex<bool>>,
    /// When set, started VMs die at once with this exit (before any agent
    /// answers), like a VMM that crashes while booting.
    die_at_start: Arc<Mutex<Option<VmExit>>>,
    /// Run on each new VM's agent before it serves (to script it).
    on_start: Arc<Mutex<Option<AgentScript>>>,
}

type AgentScript = Box<dyn Fn(&FakeAgent) + Send>;

impl FakeVms {
    pub fn new() -> FakeVms {
        FakeVms::default()
    }

    /// The VM of `pod_id`, if one was started.
    pub fn vm(&self, pod_id: &str) -> Option<FakeVm> {
        self.vms.lock().unwrap().get(pod_id).cloned()
    }

    pub fn running_count(&self) -> usize {
        let vms = self.vms.lock().unwrap();
        vms.values().filter(|vm| vm.is_running()).count()
    }

    pub fn fail_start(&self, fail: bool) {
        *self.fail_start.lock().unwrap() = fail;
    }

    pub fn die_at_start(&self, how: Option<VmExit>) {
        *self.die_at_start.lock().unwrap() = how;
    }

    /// Scripts the agent of every VM started from now on.
    pub fn on_start(&self, script: impl Fn(&FakeAgent) + Send + 'static) {
        *self.on_start.lock().unwrap() = Some(Box::new(script));
    }

    /// Starts a VM nobody recorded (a daemon crash right after spawning).
    pub fn start_unrecorded(&self, layout: &VmLayout) -> FakeVm {
        let handle = self.start(&test_spec(), layout).unwrap();
        drop(handle);
        self.vm(&pod_of(layout)).unwrap()
    }

    fn handle(vm: &FakeVm, layout: &VmLayout) -> VmHandle {
        let addr = AgentAddr::Unix(agent_socket(layout));
        VmHandle::watch(vm.pid, start_time(vm.pid), addr, FakeProcess(vm.clone()))
    }
}

fn agent_socket(layout: &VmLayout) -> std::path::PathBuf {
    layout.root().join("agent.sock")
}

fn pod_of(layout: &VmLayout) -> String {
    layout
        .root()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Pretend start times: derived from the pid, so a test can forge a
/// mismatching one.
fn start_time(pid: i32) -> u64 {
    pid as u64 * 1000
}

pub fn test_spec() -> VmSpec {
    VmSpec {
        kernel: "/fake/vmlinux".into(),
        initramfs: "/fake/initramfs".into(),
        vcpus: 1,
        memory_mib: 128,
        cid: 3,
    }
}

impl VmController for FakeVms {
    fn start(&self, spec: &VmSpec, layout: &VmLayout) -> Result<VmHandle, VmError> {
        let folder_err = |source| VmError::Folder {
            path: layout.root().to_owned(),
            source,
        };
        if *self.fail_start.lock().unwrap() {
            return Err(VmError::Spawn {
                vmm: "/fake/husk-vmm".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        std::fs::create_dir_all(layout.shared_dir()).map_err(folder_err)?;
        let socket = agent_socket(layout);
        let _ = std::fs::remove_file(&socket);
        let agent = FakeAgent::new();
        if let Some(script) = self.on_start.lock().unwrap().as_ref() {
            script(&agent);
        }
        let mut vms = self.vms.lock().unwrap();
        let pid = 100_000 + vms.len() as i32;
        let vm = FakeVm {
            pod_id: pod_of(layout),
            pid,
            spec: spec.clone(),
            agent: agent.clone(),
            exit: watch::channel(None).0,
            server: Arc::new(Mutex::new(None)),
        };
        if let Some(how) = *self.die_at_start.lock().unwrap() {
            vm.end(how);
        } else {
            let server = agent.serve(&socket).map_err(folder_err)?;
            *vm.server.lock().unwrap() = Some(server);
            // A guest that is shut down powers off: the VMM exits cleanly.
            let powered_off = vm.clone();
            tokio::spawn(async move {
                agent.wait_shutdown().await;
                powered_off.end(VmExit::Exited(0));
            });
        }
        vms.insert(vm.pod_id.clone(), vm.clone());
        Ok(Self::handle(&vm, layout))
    }

    fn reattach(&self, pid: i32, recorded: u64, layout: &VmLayout) -> Option<VmHandle> {
        let vm = self.vm(&pod_of(layout))?;
        (vm.pid == pid && start_time(pid) == recorded && vm.is_running())
            .then(|| Self::handle(&vm, layout))
    }

    fn running(&self, pods_dir: &Path) -> Vec<RunningVm> {
        let vms = self.vms.lock().unwrap();
        vms.values()
            .filter(|vm| vm.is_running() && pods_dir.join(&vm.pod_id).exists())
            .map(|vm| RunningVm {
                pod_id: vm.pod_id.clone(),
                pid: vm.pid,
                start_time: start_time(vm.pid),
            })
            .collect()
    }
}
