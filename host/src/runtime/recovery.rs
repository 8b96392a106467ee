//! Start-up after a restart (or a `kill -9`): rebuild the tables from the
//! records, reattach every Ready pod's running VM and agent, reconcile
//! containers with what the agent reports, and clean up what a crash left
//! half-done: VMs of pods that never became Ready, VMs and folders without
//! a record.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use husk_agent_client::{AgentClient, ContainerState as GuestState};

use super::error::{AgentResultExt, Result};
use super::{io, monitor, Container, Pod, Runtime};
use crate::deadlines::{AGENT_CALL, AGENT_REATTACH};
use crate::state::{ContainerState, PodState};
use crate::vm::{unmount_under, VmLayout};

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
    kill_stray_vms(runtime, &attached).await;
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
        .and_then(|vm| runtime.vms.reattach(vm.pid, vm.start_time, &layout));
    let ready = record.state == PodState::Ready;
    let vm = match vm {
        Some(vm) if ready => vm,
        unready => {
            if let Some(vm) = unready {
                tracing::warn!(pod = %pod.id, "stopping the VM of a pod that never became ready");
                vm.kill().await;
            }
            if record.state != PodState::NotReady {
                runtime.save_pod(pod, |r| r.state = PodState::NotReady)?;
            }
            runtime.mark_containers_lost(pod, "the pod's VM exited while husk was not running");
            let _ = unmount_under(layout.root());
            return Ok(false);
        }
    };
    let vm = Arc::new(vm);
    let agent = match AgentClient::connect(vm.agent_addr().clone(), AGENT_REATTACH).await {
        Ok(agent) => agent.with_call_timeout(AGENT_CALL),
        Err(error) => {
            tracing::error!(pod = %pod.id, %error, "the pod's agent does not answer: stopping its VM");
            let exit = vm.kill().await;
            runtime.on_vm_exit(pod, exit);
            let _ = unmount_under(layout.root());
            return Ok(false);
        }
    };
    *pod.vm.lock().unwrap() = Some(vm.clone());
    monitor::watch_vm(runtime, pod, &vm);
    *pod.agent.lock().unwrap() = Some(agent.clone());
    reconcile_containers(runtime, pod, &agent).await?;
    monitor::follow_events(runtime, pod, agent);
    tracing::info!(pod = %pod.id, "pod reattached");
    Ok(true)
}

/// Makes the records agree with the agent, and restarts the log copies.
async fn reconcile_containers(
    runtime: &Arc<Runtime>,
    pod: &Pod,
    agent: &AgentClient,
) -> Result<()> {
    let listed = agent
        .list_containers()
        .await
        .doing("list the pod's containers")?;
    let mut in_guest: HashMap<String, _> = listed.into_iter().map(|c| (c.id.clone(), c)).collect();
    for container in runtime.pod_containers(&pod.id) {
        let Some(guest) = in_guest.remove(&container.id) else {
            // Recorded but never created (a crash inside CreateContainer),
            // or gone with its VM.
            runtime.mark_container_lost(&container, "the container is not in the pod's VM");
            continue;
        };
        match guest.state {
            GuestState::Running => {
                runtime.save_container(&container, |r| {
                    r.state = ContainerState::Running;
                    if r.started_at_ns == 0 {
                        r.started_at_ns = guest.started_at_ns;
                    }
                })?;
            }
            GuestState::Stopped => {
                if let Some(exit) = &guest.exit {
                    if container.record().started_at_ns == 0 {
                        runtime.save_container(&container, |r| {
                            r.started_at_ns = guest.started_at_ns
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
        let _ = agent.delete_container(&id, true).await;
    }
    Ok(())
}

/// VMs serving a folder under our run dir that no attached pod owns:
/// started just before a crash recorded them, or left by a pod whose
/// record is gone.
async fn kill_stray_vms(runtime: &Runtime, attached: &HashSet<String>) {
    let pods_dir = runtime.config.run_dir.join("pods");
    for stray in runtime.vms.running(&pods_dir) {
        if attached.contains(&stray.pod_id) {
            continue;
        }
        let layout = VmLayout::new(&runtime.config.run_dir, &stray.pod_id);
        if let Some(vm) = runtime.vms.reattach(stray.pid, stray.start_time, &layout) {
            tracing::warn!(pid = stray.pid, pod = %stray.pod_id, "killing a VM no pod owns");
            vm.kill().await;
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
        if unmount_under(&path).is_ok() {
            tracing::warn!(folder = %path.display(), "removing a pod folder nobody owns");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
