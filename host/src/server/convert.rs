//! Records → CRI messages.

use k8s_cri::v1::{
    Container, ContainerEventResponse, ContainerEventType, ContainerState as CriContainerState,
    ContainerStatus, ContainerUser, ImageSpec, LinuxContainerUser, LinuxPodSandboxStatus,
    Namespace, PodSandbox, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    RuntimeHandler, RuntimeHandlerFeatures,
};

use crate::runtime::{LifecycleEvent, LifecycleKind, Runtime};
use crate::state::{ContainerRecord, ContainerState, PodRecord, PodState};

pub fn pod_state(state: PodState) -> PodSandboxState {
    match state {
        PodState::Ready => PodSandboxState::SandboxReady,
        PodState::Creating | PodState::NotReady => PodSandboxState::SandboxNotready,
    }
}

pub fn container_state(state: ContainerState) -> CriContainerState {
    match state {
        ContainerState::Created => CriContainerState::ContainerCreated,
        ContainerState::Running => CriContainerState::ContainerRunning,
        ContainerState::Exited => CriContainerState::ContainerExited,
    }
}

pub fn pod_sandbox(record: &PodRecord) -> PodSandbox {
    PodSandbox {
        id: record.id.clone(),
        metadata: record.config.metadata.clone(),
        state: pod_state(record.state) as i32,
        created_at: record.created_at_ns,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

fn image_spec(record: &ContainerRecord) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: record.image_ref.clone(),
        ..record.config.image.clone().unwrap_or_default()
    })
}

pub fn container(record: &ContainerRecord) -> Container {
    Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        metadata: record.config.metadata.clone(),
        image: image_spec(record),
        image_ref: record.image_id.clone(),
        state: container_state(record.state) as i32,
        created_at: record.created_at_ns,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        image_id: record.image_id.clone(),
    }
}

pub fn container_status(record: &ContainerRecord) -> ContainerStatus {
    let exit = record.exit.clone().unwrap_or_default();
    ContainerStatus {
        id: record.id.clone(),
        metadata: record.config.metadata.clone(),
        state: container_state(record.state) as i32,
        created_at: record.created_at_ns,
        started_at: record.started_at_ns,
        finished_at: exit.finished_at_ns,
        exit_code: exit.exit_code,
        image: image_spec(record),
        image_ref: record.image_id.clone(),
        reason: exit.reason,
        message: exit.message,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        mounts: record.config.mounts.clone(),
        log_path: record
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: record.config.linux.as_ref().and_then(|l| {
            l.resources
                .clone()
                .map(|r| k8s_cri::v1::ContainerResources {
                    linux: Some(r),
                    windows: None,
                })
        }),
        image_id: record.image_id.clone(),
        user: Some(container_user(&record.process)),
    }
}

/// The handlers `Status` lists: the default one (the empty name, which
/// pods without a RuntimeClass get and CRI clients such as critest ask
/// about) first, then every configured name. Each runs pods the same way,
/// so all have the same features.
pub fn runtime_handlers(configured: &[String]) -> Vec<RuntimeHandler> {
    let features = RuntimeHandlerFeatures {
        recursive_read_only_mounts: true,
        user_namespaces: false,
    };
    std::iter::once("")
        .chain(
            configured
                .iter()
                .map(String::as_str)
                .filter(|n| !n.is_empty()),
        )
        .map(|name| RuntimeHandler {
            name: name.to_string(),
            features: Some(features),
        })
        .collect()
}

/// The identity the container's process was started with, as resolved at
/// CreateContainer (security context, image USER, the image's groups under
/// the supplemental-groups policy): what kubelet shows in
/// `status.containerStatuses[].user`.
fn container_user(process: &oci_spec::runtime::Process) -> ContainerUser {
    let user = process.user();
    ContainerUser {
        linux: Some(LinuxContainerUser {
            uid: user.uid().into(),
            gid: user.gid().into(),
            supplemental_groups: user
                .additional_gids()
                .iter()
                .flatten()
                .map(|&g| g.into())
                .collect(),
        }),
    }
}

pub fn pod_sandbox_status(record: &PodRecord) -> PodSandboxStatus {
    let namespace_options = record
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    PodSandboxStatus {
        id: record.id.clone(),
        metadata: record.config.metadata.clone(),
        state: pod_state(record.state) as i32,
        created_at: record.created_at_ns,
        network: Some(PodSandboxNetworkStatus::default()),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: namespace_options,
            }),
        }),
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

/// A lifecycle event with the pod's status and its containers' as they
/// are now (the pod is absent once deleted).
pub fn container_event(runtime: &Runtime, event: &LifecycleEvent) -> ContainerEventResponse {
    let kind = match event.kind {
        LifecycleKind::Created => ContainerEventType::ContainerCreatedEvent,
        LifecycleKind::Started => ContainerEventType::ContainerStartedEvent,
        LifecycleKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        LifecycleKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    let pod = runtime.pod(&event.pod_id).ok();
    let containers_statuses = runtime
        .containers()
        .iter()
        .map(|c| c.record())
        .filter(|r| r.pod_id == event.pod_id)
        .map(|r| container_status(&r))
        .collect();
    ContainerEventResponse {
        container_id: event.id.clone(),
        container_event_type: kind as i32,
        created_at: event.at_ns,
        pod_sandbox_status: pod.map(|p| pod_sandbox_status(&p.record())),
        containers_statuses,
    }
}

/// The pod's VM for PodSandboxStatus's `info`: what it is, and how it
/// ended once it has.
pub fn vm_info(vm: &crate::state::VmRecord) -> serde_json::Value {
    let mut info = serde_json::json!({
        "pid": vm.pid,
        "vcpus": vm.vcpus,
        "memoryMiB": vm.memory_mib,
    });
    if let Some(end) = &vm.ended {
        info["ended"] = serde_json::json!({
            "how": end.how,
            "at": end.at_ns,
            "vmmLog": end.vmm_log,
        });
    }
    info
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{ProcessBuilder, UserBuilder};

    use super::*;

    #[test]
    fn the_default_handler_comes_first_and_once() {
        let names = |handlers: Vec<RuntimeHandler>| -> Vec<String> {
            handlers.into_iter().map(|h| h.name).collect()
        };
        assert_eq!(
            names(runtime_handlers(&["husk".into(), "".into()])),
            ["", "husk"]
        );
        let handlers = runtime_handlers(&[]);
        assert_eq!(names(handlers.clone()), [""]);
        assert!(handlers[0].features.unwrap().recursive_read_only_mounts);
    }

    #[test]
    fn the_user_is_the_one_the_process_starts_as() {
        let process = ProcessBuilder::default()
            .user(
                UserBuilder::default()
                    .uid(1000u32)
                    .gid(1000u32)
                    .additional_gids(vec![1000u32, 50000, 1234])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let linux = container_user(&process).linux.unwrap();
        assert_eq!((linux.uid, linux.gid), (1000, 1000));
        assert_eq!(linux.supplemental_groups, [1000, 50000, 1234]);
    }
}
