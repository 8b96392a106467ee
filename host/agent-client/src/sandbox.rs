//! Calls about the sandbox as a whole: the agent itself (health,
//! shutdown), files in the shared folder, the pod's hostname, files and
//! network, and guest-wide metrics.

use std::time::Duration;

use husk_proto::agent::v1::{
    GuestMetricsRequest, GuestMetricsResponse, HealthRequest, ReadFileRequest, SetupNetworkRequest,
    SetupSandboxRequest, ShutdownRequest, WriteFileRequest,
};
use husk_proto::{MAX_FILE_BYTES, MAX_SANDBOX_FILE_BYTES};

use crate::{AgentClient, AgentClientError};

/// What Health reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentHealth {
    /// husk-agent's crate version.
    pub agent_version: String,
    /// Revision of `husk.agent.v1` the agent implements.
    pub api_version: u32,
    /// Since the agent process started.
    pub agent_uptime: Duration,
    /// Since the guest kernel booted.
    pub system_uptime: Duration,
}

/// Where the agent wrote the sandbox's files (guest paths), for the
/// containers' bind mounts; `None` for a file it did not write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFiles {
    pub hosts: Option<String>,
    pub resolv_conf: Option<String>,
    pub hostname: Option<String>,
}

impl AgentClient {
    /// Asks the agent for its version and uptime.
    pub async fn health(&self) -> Result<AgentHealth, AgentClientError> {
        let reply = self
            .bounded("Health", self.raw().health(self.request(HealthRequest {})))
            .await?;
        Ok(AgentHealth {
            agent_version: reply.agent_version,
            api_version: reply.api_version,
            agent_uptime: Duration::from_millis(reply.agent_uptime_ms),
            system_uptime: Duration::from_millis(reply.system_uptime_ms),
        })
    }

    /// Asks the agent to power the VM off (or, outside a VM, to exit). Ok
    /// means the agent accepted; the VM's end is seen by its VMM exiting.
    pub async fn shutdown(&self) -> Result<(), AgentClientError> {
        let request = self.request(ShutdownRequest {});
        self.bounded("Shutdown", self.raw().shutdown(request))
            .await?;
        Ok(())
    }

    /// Reads the whole regular file `path` (absolute, under the guest's
    /// shared folder) if it holds at most `max_bytes` (0: the 1 MiB limit).
    pub async fn read_file(&self, path: &str, max_bytes: u32) -> Result<Vec<u8>, AgentClientError> {
        let request = self.request(ReadFileRequest {
            path: path.to_owned(),
            max_bytes,
        });
        let reply = self
            .bounded("ReadFile", self.raw().read_file(request))
            .await?;
        // Trust but verify: the agent must honour our bound.
        let limit = match max_bytes {
            0 => MAX_FILE_BYTES,
            n => n as usize,
        };
        if reply.data.len() > limit {
            return Err(self.too_large("ReadFile", "reply data", reply.data.len(), limit));
        }
        Ok(reply.data)
    }

    /// Creates or replaces the regular file `path` (absolute, under the
    /// guest's shared folder) with `data` (≤ 1 MiB) and permission bits
    /// `mode` (0: 0o644).
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), AgentClientError> {
        // Checked here too, so a caller gets a clear error without a call.
        if data.len() > MAX_FILE_BYTES {
            return Err(self.too_large("WriteFile", "data", data.len(), MAX_FILE_BYTES));
        }
        let request = self.request(WriteFileRequest {
            path: path.to_owned(),
            data: data.to_vec(),
            mode,
        });
        self.bounded("WriteFile", self.raw().write_file(request))
            .await?;
        Ok(())
    }

    /// Gives the sandbox its hostname, /etc/hosts, resolv.conf and
    /// namespaced sysctls; answers where the files are.
    pub async fn setup_sandbox(
        &self,
        config: SetupSandboxRequest,
    ) -> Result<SandboxFiles, AgentClientError> {
        for (what, text) in [
            ("hosts", &config.hosts),
            ("resolv_conf", &config.resolv_conf),
        ] {
            if text.len() > MAX_SANDBOX_FILE_BYTES {
                return Err(self.too_large(
                    "SetupSandbox",
                    what,
                    text.len(),
                    MAX_SANDBOX_FILE_BYTES,
                ));
            }
        }
        let reply = self
            .bounded(
                "SetupSandbox",
                self.raw().setup_sandbox(self.request(config)),
            )
            .await?;
        let some = |s: String| (!s.is_empty()).then_some(s);
        Ok(SandboxFiles {
            hosts: some(reply.hosts_path),
            resolv_conf: some(reply.resolv_conf_path),
            hostname: some(reply.hostname_path),
        })
    }

    /// Configures the sandbox's interfaces and routes.
    pub async fn setup_network(&self, config: SetupNetworkRequest) -> Result<(), AgentClientError> {
        self.bounded(
            "SetupNetwork",
            self.raw().setup_network(self.request(config)),
        )
        .await?;
        Ok(())
    }

    /// Guest-wide memory, CPU and load figures.
    pub async fn guest_metrics(&self) -> Result<GuestMetricsResponse, AgentClientError> {
        let request = self.request(GuestMetricsRequest {});
        self.bounded("GuestMetrics", self.raw().guest_metrics(request))
            .await
    }
}
