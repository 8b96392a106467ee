//! What happens without a CRI call: a VM ends, a container exits. For each
//! pod one task waits for its VM's end and one follows its agent's event
//! stream; both record what they see in the runtime's records. They hold
//! the runtime and the pod weakly: a runtime being dropped (the daemon
//! stopping) ends them and leaves the VM running.

use std::sync::{Arc, Weak};

use husk_agent_client::{AgentClient, AgentEvent, Exit, ExitReason};

use super::{now_ns, Container, LifecycleKind, Pod, Runtime};
use crate::deadlines::EVENTS_RESUBSCRIBE;
use crate::state::{ContainerState, ExitInfo, PodState, VmEnd};
use crate::vm::{last_lines, VmExit, VmHandle, TAIL_LINES};

/// Records the pod's VM ending when it does.
pub fn watch_vm(runtime: &Arc<Runtime>, pod: &Arc<Pod>, vm: &VmHandle) {
    let mut exit = vm.exit_receiver();
    let runtime = Arc::downgrade(runtime);
    let pod_ref = Arc::downgrade(pod);
    tokio::spawn(async move {
        let Ok(exit) = exit.wait_for(Option::is_some).await.map(|e| *e) else {
            return;
        };
        if let (Some(runtime), Some(pod)) = (runtime.upgrade(), pod_ref.upgrade()) {
            runtime.on_vm_exit(&pod, exit);
        }
    });
}

/// Follows `pod`'s agent events until its VM is gone.
pub fn follow_events(runtime: &Arc<Runtime>, pod: &Arc<Pod>, agent: AgentClient) {
    let runtime = Arc::downgrade(runtime);
    let pod = Arc::downgrade(pod);
    tokio::spawn(async move {
        loop {
            follow_once(&runtime, &pod, &agent).await;
            let alive = pod
                .upgrade()
                .and_then(|p| p.vm())
                .is_some_and(|vm| vm.exit().is_none());
            if !alive || runtime.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(EVENTS_RESUBSCRIBE).await;
        }
    });
}

async fn follow_once(runtime: &Weak<Runtime>, pod: &Weak<Pod>, agent: &AgentClient) {
    let Ok(mut events) = agent.events().await else {
        return;
    };
    // Exits that happened while nobody followed the stream.
    if let (Some(runtime), Some(pod)) = (runtime.upgrade(), pod.upgrade()) {
        runtime.reconcile_exits(&pod, agent).await;
    }
    while let Ok(Some(event)) = events.next().await {
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        if let AgentEvent::Exited {
            process,
            exit,
            pid: _,
        } = event
        {
            if process.exec_id.is_some() {
                continue;
            }
            if let Ok(container) = runtime.container(&process.container_id) {
                runtime.on_container_exit(&container, &exit);
            }
        }
    }
}

/// The CRI's view of an exit.
pub fn exit_info(exit: &Exit) -> ExitInfo {
    let reason = match exit.reason {
        ExitReason::OomKilled => "OOMKilled",
        _ if exit.code == 0 => "Completed",
        _ => "Error",
    };
    ExitInfo {
        exit_code: exit.code,
        finished_at_ns: if exit.finished_at_ns > 0 {
            exit.finished_at_ns
        } else {
            now_ns()
        },
        reason: reason.to_string(),
        message: String::new(),
    }
}

impl Runtime {
    /// Records a container's exit once.
    pub(super) fn on_container_exit(&self, container: &Container, exit: &Exit) {
        let info = exit_info(exit);
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
    pub(super) async fn reconcile_exits(&self, pod: &Pod, agent: &AgentClient) {
        let Ok(listed) = agent.list_containers().await else {
            return;
        };
        for guest in listed {
            if let (Some(exit), Ok(container)) = (&guest.exit, self.container(&guest.id)) {
                if container.pod_id == pod.id {
                    self.on_container_exit(&container, exit);
                }
            }
        }
    }

    /// The VM is gone (`exit` says how, when known): the pod is NotReady
    /// and its containers exited.
    pub(super) fn on_vm_exit(&self, pod: &Pod, exit: Option<VmExit>) {
        *pod.agent.lock().unwrap() = None;
        match exit {
            Some(exit) if !exit.is_clean() => {
                tracing::warn!(pod = %pod.id, %exit, "the pod's VM ended")
            }
            _ => {}
        }
        if let Some(exit) = exit {
            self.record_vm_end(pod, exit);
        }
        if let Err(error) = self.mark_pod_stopped(pod) {
            tracing::error!(pod = %pod.id, %error, "cannot record the pod's state");
        }
        let why = match exit {
            Some(exit) => format!("the pod's VM {exit}"),
            None => "the pod's VM exited".to_string(),
        };
        self.mark_containers_lost(pod, &why);
    }

    /// Keeps how the VM ended, and what husk-vmm said last, in the pod's
    /// record (its verbose status shows them).
    fn record_vm_end(&self, pod: &Pod, exit: VmExit) {
        let layout = self.layout(pod);
        let end = VmEnd {
            how: exit.to_string(),
            at_ns: now_ns(),
            vmm_log: last_lines(&layout.vmm_log(), TAIL_LINES),
        };
        let saved = self.save_pod(pod, |r| {
            if let Some(vm) = r.vm.as_mut() {
                vm.ended.get_or_insert(end);
            }
        });
        if let Err(error) = saved {
            tracing::error!(pod = %pod.id, %error, "cannot record how the pod's VM ended");
        }
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
            self.mark_container_lost(&container, why);
        }
    }

    pub(super) fn mark_container_lost(&self, container: &Container, why: &str) {
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
