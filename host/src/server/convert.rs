//! Records → CRI messages.

use k8s_cri::v1::{
    Container, ContainerState as CriContainerState, ContainerStatus, ImageSpec, PodSandbox,
    PodSandboxState,
};

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
        user: None,
    }
}
