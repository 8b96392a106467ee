//! What happens without a CRI call: a VM exits, a container exits. Each
//! pod has a monitor task owning its VMM process and a task following its
//! agent's event stream; both report into the runtime's records.

use std::sync::{Arc, Weak};
use std::time::Duration;

use husk_proto::agent::v1::{event, EventsRequest, ExitStatus, ListContainersRequest};
use tokio::sync::{mpsc, watch};

use super::agent::{PodAgent, SHORT_CALL};
use super::{now_ns, Container, LifecycleKind, Pod, Runtime};
use crate::state::{ContainerState, ExitInfo, PodState};
use crate::vm::VmProcess;

/// How long a killed VMM may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Pause before following a broken event stream again.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// The daemon's side of a VM monitor.
pub struct VmHandle {
    kill: mpsc::Sender<()>,
    gone: watch::Receiver<bool>,
}

impl VmHandle {
    pub fn gone_receiver(&self) -> watch::Receiver<bool> {
        self.gone.clone()
    }

    pub fn is_gone(&self) -> bool {
        *self.gone.borrow()
    }

    /// Kills the VMM (if still running) and waits until it is gone.
    pub async fn kill(&self) {
        let _ = self.kill.send(()).await;
        self.wait_gone(KILL_WAIT * 2).await;
    }

    /// Waits at most `deadline` for the VMM to exit on its own.
    pub async fn wait_gone(&self, deadline: Duration) -> bool {
        let mut gone = self.gone.clone();
        let wait = async move { gone.wait_for(|g| *g).await.is_ok() };
        tokio::time::timeout(deadline, wait).await.unwrap_or(false)
    }
}

/// Starts the monitor of `pod`'s VMM.
pub fn watch_vm(runtime: &Arc<Runtime>, pod: &Arc<Pod>, mut vm: VmProcess) -> VmHandle {
    let (kill_tx, mut kill_rx) = mpsc::channel(1);
    let (gone_tx, gone_rx) = watch::channel(false);
    let runtime = Arc::downgrade(runtime);
    let pod_ref = Arc::downgrade(pod);
    tokio::spawn(async move {
        tokio::select! {
            _ = vm.wait_exit() => {}
            _ = kill_rx.recv() => vm.kill(KILL_WAIT).await,
        }
        let _ = gone_tx.send(true);
        if let (Some(runtime), Some(pod)) = (runtime.upgrade(), pod_ref.upgrade()) {
            runtime.on_vm_exit(&pod);
        }
    });
    VmHandle {
        kill: kill_tx,
        gone: gone_rx,
    }
}

/// Follows `pod`'s agent events until its VM is gone.
pub fn follow_events(runtime: &Arc<Runtime>, pod: &Arc<Pod>, agent: PodAgent) {
    let runtime = Arc::downgrade(runtime);
    let pod = Arc::downgrade(pod);
    tokio::spawn(async move {
        loop {
            follow_once(&runtime, &pod, &agent).await;
            let alive = pod.upgrade().is_some_and(|p| {
                p.vm.lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|vm| !vm.is_gone())
            });
            if !alive {
                return;
            }
            tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
        }
    });
}

async fn follow_once(runtime: &Weak<Runtime>, pod: &Weak<Pod>, agent: &PodAgent) {
    let Ok(response) = tokio::time::timeout(SHORT_CALL, agent.raw().events(EventsRequest {})).await
    else {
        return;
    };
    let Ok(response) = response else { return };
    let mut stream = response.into_inner();
    // Exits that happened while nobody followed the stream.
    if let (Some(runtime), Some(pod)) = (runtime.upgrade(), pod.upgrade()) {
        runtime.reconcile_exits(&pod, agent).await;
    }
    while let Ok(Some(event)) = stream.message().await {
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        if !event.exec_id.is_empty() {
            continue;
        }
        if let Some(event::Kind::Exit(status)) = event.kind {
            if let Ok(container) = runtime.container(&event.container_id) {
                runtime.on_container_exit(&container, &status);
            }
        }
    }
}

/// The CRI's view of an agent exit status.
pub fn exit_info(status: &ExitStatus) -> ExitInfo {
    let reason = match status.reason.as_str() {
        "Completed" => "Completed",
        "OOMKilled" => "OOMKilled",
        _ if status.exit_code == 0 => "Completed",
        _ => "Error",
    };
    ExitInfo {
        exit_code: status.exit_code,
        finished_at_ns: if status.finished_at_ns > 0 {
            status.finished_at_ns
        } else {
            now_ns()
        },
        reason: reason.to_string(),
        message: String::new(),
    }
}

impl Runtime {
    /// Records a container's exit once.
    pub(super) fn on_container_exit(&self, container: &Container, status: &ExitStatus) {
        let info = exit_info(status);
        let already = container.record.lock().unwrap().state == ContainerState::Exited;
        if already {
            return;
        }
        match self.save_container(container, |r| {
            r.state = ContainerState::Exited;
            r.exit = Some(info);
        }) {
            Ok(_) => self.emit(&container.id, &container.pod_id, LifecycleKind::Stopped),
            Err(error) => {
                tracing::error!(container = %container.id, %error, "cannot record the container's exit")
            }
        }
    }

    /// Asks the agent for every container's state and records exits the
    /// event stream did not deliver.
    pub(super) async fn reconcile_exits(&self, pod: &Pod, agent: &PodAgent) {
        let listed = agent
            .call("list containers", SHORT_CALL, |mut c| async move {
                c.list_containers(ListContainersRequest {}).await
            })
            .await;
        let Ok(listed) = listed else { return };
        for state in listed.containers {
            if let (Some(exit), Ok(container)) = (&state.exit, self.container(&state.container_id))
            {
                if container.pod_id == pod.id {
                    self.on_container_exit(&container, exit);
                }
            }
        }
    }

    /// The VMM is gone: the pod is NotReady and its containers exited.
    pub(super) fn on_vm_exit(&self, pod: &Pod) {
        *pod.agent.lock().unwrap() = None;
        if let Err(error) = self.mark_pod_stopped(pod) {
            tracing::error!(pod = %pod.id, %error, "cannot record the pod's state");
        }
        self.mark_containers_lost(pod, "the pod's VM exited");
    }

    /// Records the pod NotReady; the first caller to see it Ready (the VM
    /// monitor or StopPodSandbox, whichever wins the record's lock)
    /// announces it stopped. A pod that never became Ready was never
    /// announced.
    pub(super) fn mark_pod_stopped(&self, pod: &Pod) -> super::Result<()> {
        if pod.record.lock().unwrap().state == PodState::NotReady {
            return Ok(());
        }
        let mut was_ready = false;
        self.save_pod(pod, |r| {
            was_ready = r.state == PodState::Ready;
            r.state = PodState::NotReady;
        })?;
        if was_ready {
            tracing::info!(pod = %pod.id, "pod stopped");
            self.emit(&pod.id, &pod.id, LifecycleKind::Stopped);
        }
        Ok(())
    }

    /// Containers that can no longer run: exited with 255, like other
    /// runtimes report an exit they could not observe.
    pub(super) fn mark_containers_lost(&self, pod: &Pod, why: &str) {
        for container in self.pod_containers(&pod.id) {
            self.mark_containers_lost_one(&container, why);
        }
    }

    pub(super) fn mark_containers_lost_one(&self, container: &Container, why: &str) {
        {
            let state = container.record.lock().unwrap().state;
            if state == ContainerState::Exited {
                return;
            }
            let result = self.save_container(container, |r| {
                r.state = ContainerState::Exited;
                r.exit = Some(ExitInfo {
                    exit_code: 255,
                    finished_at_ns: now_ns(),
                    reason: "Error".into(),
                    message: why.into(),
                });
            });
            match result {
                Ok(_) => self.emit(&container.id, &container.pod_id, LifecycleKind::Stopped),
                Err(error) => {
                    tracing::error!(container = %container.id, %error, "cannot record the container's state")
                }
            }
        }
    }
}
