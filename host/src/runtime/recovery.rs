//! Start-up after a restart (or a `kill -9`): rebuild the tables from the
//! records, reattach every Ready pod's running VMM and agent, reconcile
//! containers with what the agent reports, and clean up what a crash left
//! half-done: VMMs of pods that never became Ready, VMMs and folders
//! without a record.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use husk_agent_client::AgentClient;
use husk_proto::agent::v1::{
    ContainerStatus as AgentStatus, DeleteContainerRequest, ListContainersRequest,
};
use husk_proto::AGENT_VSOCK_PORT;

use super::agent::{PodAgent, SHORT_CALL};
use super::error::Result;
use super::events::{follow_events, watch_vm};
use super::{io, Container, Pod, Runtime};
use crate::state::{ContainerState, PodState};
use crate::vm::{unmount_under, VmLayout, VmProcess};

/// A running guest's agent answers at once; a VM whose agent does not
/// within this long is treated as broken.
const REATTACH_DEADLINE: Duration = Duration::from_secs(15);

pub async fn recover(runtime: &Arc<Runtime>) -> Result<()> {
    let (pods, containers) = runtime.store.load()?;
    {
        let mut tables = runtime.tables.lock().unwrap();
        for record in pods {
            tables.pods.insert(record.id.clone(), Pod::new(record));
        }
        for record in containers {
            if !tables.pods.contains_key(&record.pod_id) {
                tracing::warn!(container = %record.id, "dropping the record of a container whose pod is gone");
                runtime.store.remove_container(&record.id)?;
                continue;
            }
            tables
                .containers
                .insert(record.id.clone(), Container::new(record));
        }
    }
    let mut attached = HashSet::new();
    for pod in runtime.pods() {
        if recover_pod(runtime, &pod).await? {
            attached.insert(pod.id.clone());
        }
    }
    kill_stray_vmms(runtime, &attached).await;
    remove_stray_folders(runtime);
    tracing::info!(
        pods = runtime.pods().len(),
        running = attached.len(),
        containers = runtime.containers().len(),
        "state recovered"
    );
    Ok(())
}

/// True when the pod's VM runs and is attached again.
async fn recover_pod(runtime: &Arc<Runtime>, pod: &Arc<Pod>) -> Result<bool> {
    let record = pod.record();
    let layout = runtime.layout(pod);
    let vm = record
        .vm
        .as_ref()
        .and_then(|vm| VmProcess::reattach(vm.pid, vm.start_time));
    if record.state != PodState::Ready || vm.is_none() {
        if let Some(mut vm) = vm {
            tracing::warn!(pod = %pod.id, "stopping the VM of a pod that never became ready");
            vm.kill(Duration::from_secs(10)).await;
        }
        if record.state != PodState::NotReady {
            runtime.save_pod(pod, |r| r.state = PodState::NotReady)?;
        }
        runtime.mark_containers_lost(pod, "the pod's VM exited while husk was not running");
        let _ = unmount_under(layout.root());
        return Ok(false);
    }
    let vm = vm.expect("checked above");
    let handle = watch_vm(runtime, pod, vm);
    let client = AgentClient::connect_hybrid_vsock(
        layout.vsock_socket(),
        AGENT_VSOCK_PORT,
        REATTACH_DEADLINE,
    )
    .await;
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(pod = %pod.id, %error, "the pod's agent does not answer: stopping its VM");
            handle.kill().await;
            runtime.on_vm_exit(pod);
            let _ = unmount_under(layout.root());
            return Ok(false);
        }
    };
    *pod.vm.lock().unwrap() = Some(handle);
    let agent = PodAgent::new(&client);
    *pod.agent.lock().unwrap() = Some(agent.clone());
    reconcile_containers(runtime, pod, &agent).await?;
    follow_events(runtime, pod, agent);
    tracing::info!(pod = %pod.id, "pod reattached");
    Ok(true)
}

/// Makes the records agree with the agent, and restarts the log copies.
async fn reconcile_containers(runtime: &Arc<Runtime>, pod: &Pod, agent: &PodAgent) -> Result<()> {
    let listed = agent
        .call("list containers", SHORT_CALL, |mut c| async move {
            c.list_containers(ListContainersRequest {}).await
        })
        .await?;
    let mut in_guest: HashMap<String, _> = listed
        .containers
        .into_iter()
        .map(|s| (s.container_id.clone(), s))
        .collect();
    for container in runtime.pod_containers(&pod.id) {
        let Some(state) = in_guest.remove(&container.id) else {
            // Recorded but never created (a crash inside CreateContainer),
            // or gone with its VM.
            if container.record().state != ContainerState::Exited {
                runtime
                    .mark_containers_lost_one(&container, "the container is not in the pod's VM");
            }
            continue;
        };
        match state.status() {
            AgentStatus::Running => {
                runtime.save_container(&container, |r| {
                    r.state = ContainerState::Running;
                    if r.started_at_ns == 0 {
                        r.started_at_ns = state.started_at_ns;
                    }
                })?;
            }
            AgentStatus::Stopped => {
                if let Some(exit) = &state.exit {
                    if container.record().started_at_ns == 0 {
                        runtime.save_container(&container, |r| {
                            r.started_at_ns = state.started_at_ns
                        })?;
                    }
                    runtime.on_container_exit(&container, exit);
                }
            }
            _ => {}
        }
        let record = container.record();
        let writer = match io::open_log(record.log_path.as_deref()) {
            Ok(writer) => writer,
            Err(error) => {
                tracing::warn!(container = %container.id, %error, "cannot reopen the container log");
                None
            }
        };
        io::start_pump(&container, agent.clone(), writer);
    }
    // In the guest without a record: a crash inside RemoveContainer.
    for id in in_guest.into_keys() {
        tracing::warn!(pod = %pod.id, container = %id, "deleting a container nobody knows");
        let _ = agent
            .call("delete container", SHORT_CALL, |mut c| async move {
                c.delete_container(DeleteContainerRequest {
                    container_id: id,
                    force: true,
                })
                .await
            })
            .await;
    }
    Ok(())
}

/// husk-vmm processes serving a socket under our run dir that no attached
/// pod owns: started just before a crash recorded their pid, or left by a
/// pod whose record is gone.
async fn kill_stray_vmms(runtime: &Runtime, attached: &HashSet<String>) {
    let pods_dir = runtime.config.run_dir.join("pods");
    // The kernel keeps 15 bytes of a command name.
    let vmm_name: String = runtime
        .config
        .vm
        .vmm
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // The command name first: reading a command line takes the
        // process's memory-map lock, which a process stuck in the kernel
        // may hold, so only husk-vmm processes get that far.
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != vmm_name {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(socket) = args
            .windows(2)
            .find(|w| w[0] == b"--vsock-uds")
            .map(|w| std::path::PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))
        else {
            continue;
        };
        let Ok(rest) = socket.strip_prefix(&pods_dir) else {
            continue;
        };
        let owner = rest
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if attached.contains(&owner) {
            continue;
        }
        if let Some(start) = crate::vm::start_time(pid) {
            if let Some(mut vm) = VmProcess::reattach(pid, start) {
                tracing::warn!(pid, pod = %owner, "killing a husk-vmm no pod owns");
                vm.kill(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Pod folders without a record (a crash inside RemovePodSandbox).
fn remove_stray_folders(runtime: &Runtime) {
    let pods_dir = runtime.config.run_dir.join("pods");
    let Ok(entries) = std::fs::read_dir(&pods_dir) else {
        return;
    };
    let known: HashSet<String> = runtime.pods().iter().map(|p| p.id.clone()).collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if known.contains(&name) {
            continue;
        }
        let path = entry.path();
        let layout = VmLayout::from_root(path.clone());
        if unmount_under(layout.root()).is_ok() {
            tracing::warn!(folder = %path.display(), "removing a pod folder nobody owns");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
