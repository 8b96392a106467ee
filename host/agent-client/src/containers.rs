//! Container calls: create from an OCI spec and image layers, start,
//! delete, list, status, resource updates, cgroup statistics.

use husk_proto::agent::v1::{
    CgroupStats, CgroupVersion, ContainerState, ContainerStatsRequest, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest,
    StartContainerRequest, UpdateContainerRequest,
};
use husk_proto::{MAX_CONTAINERS, MAX_LAYERS, MAX_SPEC_BYTES};
use oci_spec::runtime::{LinuxResources, Spec};

use crate::processes::Exit;
use crate::{AgentClient, AgentClientError};

/// A container as the agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestContainer {
    pub id: String,
    pub state: ContainerState,
    /// The init process's pid in the guest.
    pub pid: u32,
    /// Unix times in nanoseconds; 0 when it has not happened.
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    /// Set once the init process has exited.
    pub exit: Option<Exit>,
    /// Exec'd processes still known to the agent.
    pub exec_ids: Vec<String>,
}

impl From<ContainerStatus> for GuestContainer {
    fn from(status: ContainerStatus) -> Self {
        GuestContainer {
            state: status.state(),
            id: status.container_id,
            pid: status.pid,
            created_at_ns: status.created_at_ns,
            started_at_ns: status.started_at_ns,
            exit: status.exit.as_ref().map(Exit::from),
            exec_ids: status.exec_ids,
        }
    }
}

/// One reading of a container's cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupSample {
    /// Unix time the figures were read, nanoseconds (0 if the agent did not
    /// say).
    pub timestamp_ns: i64,
    pub version: CgroupVersion,
    pub stats: CgroupStats,
}

impl AgentClient {
    /// Creates container `id` from `spec` over `layers` (folders relative
    /// to the shared folder, lowest first); `stdin` gives its init process
    /// a stdin pipe. Answers the init process's pid.
    pub async fn create_container(
        &self,
        id: &str,
        spec: &Spec,
        layers: &[String],
        stdin: bool,
    ) -> Result<u32, AgentClientError> {
        let json = serde_json::to_vec(spec).map_err(|source| AgentClientError::Encode {
            call: "CreateContainer",
            what: "the OCI spec",
            source,
        })?;
        self.create_container_from_json(id, json, layers, stdin)
            .await
    }

    /// [`create_container`](Self::create_container) with the spec already
    /// encoded (the agent checks it; tests send broken ones on purpose).
    pub async fn create_container_from_json(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        layers: &[String],
        stdin: bool,
    ) -> Result<u32, AgentClientError> {
        const CALL: &str = "CreateContainer";
        if spec_json.len() > MAX_SPEC_BYTES {
            return Err(self.too_large(CALL, "the OCI spec", spec_json.len(), MAX_SPEC_BYTES));
        }
        if layers.len() > MAX_LAYERS {
            return Err(AgentClientError::Invalid {
                call: CALL,
                reason: format!("{} layers; at most {MAX_LAYERS}", layers.len()),
            });
        }
        let request = self.request(CreateContainerRequest {
            container_id: id.to_owned(),
            oci_spec_json: spec_json,
            layers: layers.to_vec(),
            stdin,
        });
        let reply = self
            .bounded(CALL, self.raw().create_container(request))
            .await?;
        Ok(reply.pid)
    }

    /// Runs a created container's process.
    pub async fn start_container(&self, id: &str) -> Result<(), AgentClientError> {
        let request = self.request(StartContainerRequest {
            container_id: id.to_owned(),
        });
        self.bounded("StartContainer", self.raw().start_container(request))
            .await?;
        Ok(())
    }

    /// Removes a container; `force` kills it first if it runs.
    pub async fn delete_container(&self, id: &str, force: bool) -> Result<(), AgentClientError> {
        let request = self.request(DeleteContainerRequest {
            container_id: id.to_owned(),
            force,
        });
        self.bounded("DeleteContainer", self.raw().delete_container(request))
            .await?;
        Ok(())
    }

    /// One container's status.
    pub async fn container_status(&self, id: &str) -> Result<GuestContainer, AgentClientError> {
        let request = self.request(ContainerStatusRequest {
            container_id: id.to_owned(),
        });
        let reply = self
            .bounded("ContainerStatus", self.raw().container_status(request))
            .await?;
        reply.status.map(GuestContainer::from).ok_or_else(|| {
            self.call_error(
                "ContainerStatus",
                tonic::Status::internal("the agent answered without a status"),
            )
        })
    }

    /// Every container in the sandbox.
    pub async fn list_containers(&self) -> Result<Vec<GuestContainer>, AgentClientError> {
        let request = self.request(ListContainersRequest {});
        let reply = self
            .bounded("ListContainers", self.raw().list_containers(request))
            .await?;
        if reply.containers.len() > MAX_CONTAINERS {
            let n = reply.containers.len();
            return Err(self.too_large("ListContainers", "container list", n, MAX_CONTAINERS));
        }
        Ok(reply
            .containers
            .into_iter()
            .map(GuestContainer::from)
            .collect())
    }

    /// Applies new cgroup limits to a container.
    pub async fn update_container(
        &self,
        id: &str,
        resources: &LinuxResources,
    ) -> Result<(), AgentClientError> {
        const CALL: &str = "UpdateContainer";
        let json = serde_json::to_vec(resources).map_err(|source| AgentClientError::Encode {
            call: CALL,
            what: "the resources",
            source,
        })?;
        if json.len() > MAX_SPEC_BYTES {
            return Err(self.too_large(CALL, "the resources", json.len(), MAX_SPEC_BYTES));
        }
        let request = self.request(UpdateContainerRequest {
            container_id: id.to_owned(),
            resources_json: json,
        });
        self.bounded(CALL, self.raw().update_container(request))
            .await?;
        Ok(())
    }

    /// The container's cgroup statistics.
    pub async fn container_stats(&self, id: &str) -> Result<CgroupSample, AgentClientError> {
        let request = self.request(ContainerStatsRequest {
            container_id: id.to_owned(),
        });
        let reply = self
            .bounded("ContainerStats", self.raw().container_stats(request))
            .await?;
        let stats = reply.stats.unwrap_or_default();
        // API 3 agents only said it in words.
        let version = match stats.cgroup() {
            CgroupVersion::Unspecified => match stats.cgroup_version.as_str() {
                "v1" => CgroupVersion::V1,
                "v2" => CgroupVersion::V2,
                _ => CgroupVersion::Unspecified,
            },
            known => known,
        };
        Ok(CgroupSample {
            timestamp_ns: reply.timestamp_ns,
            version,
            stats,
        })
    }
}
