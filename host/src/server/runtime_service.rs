//! CRI RuntimeService.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService as CriRuntimeService;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::filters::{id_matches, labels_match};
use crate::runtime::Runtime;
use crate::state::ContainerState;

pub struct RuntimeService {
    runtime: Arc<Runtime>,
}

impl RuntimeService {
    pub fn new(runtime: Arc<Runtime>) -> RuntimeService {
        RuntimeService { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented by husk yet (no streaming server: use ExecSync for commands)"
    ))
}

/// Seconds from the CRI, negative treated as zero.
fn seconds(value: i64) -> Duration {
    Duration::from_secs(value.max(0) as u64)
}

pub const RUNTIME_NAME: &str = "husk";
pub const CRI_VERSION: &str = "v1";

#[tonic::async_trait]
impl CriRuntimeService for RuntimeService {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        })
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Reply<cri::RunPodSandboxResponse> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .runtime
            .run_pod(config, request.runtime_handler)
            .await?;
        ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Reply<cri::StopPodSandboxResponse> {
        self.runtime
            .stop_pod(&request.into_inner().pod_sandbox_id)
            .await?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        self.runtime
            .remove_pod(&request.into_inner().pod_sandbox_id)
            .await?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        let pod = self.runtime.pod(&request.into_inner().pod_sandbox_id)?;
        let record = pod.record();
        let mut info = std::collections::HashMap::new();
        if let Some(vm) = &record.vm {
            info.insert("vm".to_string(), convert::vm_info(vm).to_string());
        }
        ok(cri::PodSandboxStatusResponse {
            status: Some(convert::pod_sandbox_status(&record)),
            info,
            containers_statuses: vec![],
            timestamp: crate::runtime::now_ns(),
        })
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Reply<cri::ListPodSandboxResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut items: Vec<cri::PodSandbox> = self
            .runtime
            .pods()
            .iter()
            .map(|p| convert::pod_sandbox(&p.record()))
            .filter(|p| id_matches(&filter.id, &p.id))
            .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == p.state))
            .filter(|p| labels_match(&filter.label_selector, &p.labels))
            .collect();
        items.sort_by_key(|p| p.created_at);
        ok(cri::ListPodSandboxResponse { items })
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Reply<cri::CreateContainerResponse> {
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .runtime
            .create_container(&request.pod_sandbox_id, config)
            .await?;
        ok(cri::CreateContainerResponse { container_id: id })
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Reply<cri::StartContainerResponse> {
        self.runtime
            .start_container(&request.into_inner().container_id)
            .await?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Reply<cri::StopContainerResponse> {
        let request = request.into_inner();
        self.runtime
            .stop_container(&request.container_id, seconds(request.timeout))
            .await?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Reply<cri::RemoveContainerResponse> {
        self.runtime
            .remove_container(&request.into_inner().container_id)
            .await?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Reply<cri::ListContainersResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut containers: Vec<cri::Container> = self
            .runtime
            .containers()
            .iter()
            .map(|c| convert::container(&c.record()))
            .filter(|c| id_matches(&filter.id, &c.id))
            .filter(|c| id_matches(&filter.pod_sandbox_id, &c.pod_sandbox_id))
            .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == c.state))
            .filter(|c| labels_match(&filter.label_selector, &c.labels))
            .collect();
        containers.sort_by_key(|c| c.created_at);
        ok(cri::ListContainersResponse { containers })
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Reply<cri::ContainerStatusResponse> {
        let container = self.runtime.container(&request.into_inner().container_id)?;
        ok(cri::ContainerStatusResponse {
            status: Some(convert::container_status(&container.record())),
            info: Default::default(),
        })
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        let request = request.into_inner();
        let resources = request.linux.ok_or_else(|| {
            Status::invalid_argument("linux resources are required (husk runs Linux only)")
        })?;
        self.runtime
            .update_container_resources(&request.container_id, resources)
            .await?;
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        self.runtime
            .reopen_container_log(&request.into_inner().container_id)?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Reply<cri::ExecSyncResponse> {
        let request = request.into_inner();
        let out = self
            .runtime
            .exec_sync(&request.container_id, request.cmd, seconds(request.timeout))
            .await?;
        ok(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        })
    }

    async fn exec(&self, _: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        Err(unimplemented("Exec (streaming)"))
    }

    async fn attach(&self, _: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        Err(unimplemented("Attach"))
    }

    async fn port_forward(
        &self,
        _: Request<cri::PortForwardRequest>,
    ) -> Reply<cri::PortForwardResponse> {
        Err(Status::unimplemented(
            "PortForward is not implemented by husk yet (pods have no network yet)",
        ))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Reply<cri::ContainerStatsResponse> {
        let container = self.runtime.container(&request.into_inner().container_id)?;
        let stats = self.runtime.container_stats(&container).await?;
        ok(cri::ContainerStatsResponse { stats })
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for container in self.runtime.containers() {
            let record = container.record();
            if !id_matches(&filter.id, &record.id)
                || !id_matches(&filter.pod_sandbox_id, &record.pod_id)
                || !labels_match(&filter.label_selector, &record.config.labels)
                || record.state == ContainerState::Exited
            {
                continue;
            }
            // One broken VM must not hide every other container's stats.
            match self.runtime.container_stats(&container).await {
                Ok(Some(s)) => stats.push(s),
                Ok(None) => {}
                Err(error) => tracing::warn!(container = %record.id, %error, "no stats"),
            }
        }
        ok(cri::ListContainerStatsResponse { stats })
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Reply<cri::PodSandboxStatsResponse> {
        let stats = self
            .runtime
            .pod_stats(&request.into_inner().pod_sandbox_id)
            .await?;
        ok(cri::PodSandboxStatsResponse { stats })
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for pod in self.runtime.pods() {
            let record = pod.record();
            if !id_matches(&filter.id, &record.id)
                || !labels_match(&filter.label_selector, &record.config.labels)
            {
                continue;
            }
            match self.runtime.pod_stats(&pod.id).await {
                Ok(Some(s)) => stats.push(s),
                Ok(None) => {}
                Err(error) => tracing::warn!(pod = %record.id, %error, "no stats"),
            }
        }
        ok(cri::ListPodSandboxStatsResponse { stats })
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        // kubelet sends the pod CIDR here; there is no pod network to
        // configure yet.
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message:
                    "husk does not set up pod networking yet: pods get a loopback interface only"
                        .into(),
            },
        ];
        let runtime_handlers = convert::runtime_handlers(&self.runtime.config().runtime_handlers);
        ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info: Default::default(),
            runtime_handlers,
            // Merge and Strict are both honoured (spec/user.rs), and
            // ContainerStatus reports the resulting identity.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        })
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        let runtime = self.runtime.clone();
        let events = BroadcastStream::new(self.runtime.subscribe()).filter_map(move |event| {
            let runtime = runtime.clone();
            async move {
                match event {
                    Ok(event) => Some(Ok(convert::container_event(&runtime, &event))),
                    // A subscriber that fell behind misses events; kubelet
                    // relists then.
                    Err(BroadcastStreamRecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a GetContainerEvents client fell behind");
                        None
                    }
                }
            }
        });
        ok(Box::pin(events))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        ok(cri::ListMetricDescriptorsResponse::default())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse::default())
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Reply<cri::RuntimeConfigResponse> {
        ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        })
    }
}
