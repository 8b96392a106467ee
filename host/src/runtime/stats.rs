//! Container and pod statistics from the agent, in the CRI's units.

use std::sync::Arc;

use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, LinuxPodSandboxStats, MemoryUsage,
    PodSandboxAttributes, PodSandboxStats, UInt64Value,
};

use super::error::{AgentResultExt, Result};
use super::{now_ns, Container, Runtime};
use crate::state::ContainerState;

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

impl Runtime {
    /// Stats of one container; `None` when it does not run (no cgroup).
    pub async fn container_stats(&self, container: &Container) -> Result<Option<ContainerStats>> {
        let record = container.record();
        if record.state == ContainerState::Exited {
            return Ok(None);
        }
        let Ok((_, agent)) = self.running_pod(container) else {
            return Ok(None);
        };
        let sample = agent
            .container_stats(&container.id)
            .await
            .doing("read the container's stats")?;
        let stats = sample.stats;
        let timestamp = if sample.timestamp_ns > 0 {
            sample.timestamp_ns
        } else {
            now_ns()
        };
        let usage_ns = stats.cpu_usage_usec.saturating_mul(1000);
        // Nano-cores from the previous sample of this container.
        let nano_cores = {
            let mut last = container.last_cpu.lock().unwrap();
            let rate = last.and_then(|(t, u)| {
                let dt = timestamp.checked_sub(t).filter(|d| *d > 0)? as u128;
                Some((usage_ns.saturating_sub(u) as u128 * 1_000_000_000 / dt) as u64)
            });
            *last = Some((timestamp, usage_ns));
            rate
        };
        let available = (stats.memory_limit_bytes > 0 && stats.memory_limit_bytes < u64::MAX / 2)
            .then(|| {
                stats
                    .memory_limit_bytes
                    .saturating_sub(stats.memory_working_set_bytes)
            });
        Ok(Some(ContainerStats {
            attributes: Some(ContainerAttributes {
                id: container.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            cpu: Some(CpuUsage {
                timestamp,
                usage_core_nano_seconds: value(usage_ns),
                usage_nano_cores: nano_cores.and_then(value),
            }),
            memory: Some(MemoryUsage {
                timestamp,
                working_set_bytes: value(stats.memory_working_set_bytes),
                available_bytes: available.and_then(value),
                usage_bytes: value(stats.memory_usage_bytes),
                rss_bytes: value(stats.memory_anon_bytes),
                page_faults: None,
                major_page_faults: None,
            }),
            writable_layer: None,
            swap: None,
        }))
    }

    /// The pod's stats: the guest's CPU and memory and its containers'.
    pub async fn pod_stats(self: &Arc<Self>, pod_id: &str) -> Result<Option<PodSandboxStats>> {
        let pod = self.pod(pod_id)?;
        let record = pod.record();
        let Some(agent) = pod.agent() else {
            return Ok(None);
        };
        let metrics = agent
            .guest_metrics()
            .await
            .doing("read the guest's metrics")?;
        let timestamp = now_ns();
        let mut containers = Vec::new();
        for container in self.pod_containers(&pod.id) {
            if let Some(stats) = self.container_stats(&container).await? {
                containers.push(stats);
            }
        }
        let cpu_ns = (metrics.cpu_user_usec + metrics.cpu_system_usec).saturating_mul(1000);
        let used = metrics
            .memory_total_bytes
            .saturating_sub(metrics.memory_available_bytes);
        Ok(Some(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: Some(CpuUsage {
                    timestamp,
                    usage_core_nano_seconds: value(cpu_ns),
                    usage_nano_cores: None,
                }),
                memory: Some(MemoryUsage {
                    timestamp,
                    working_set_bytes: value(used),
                    available_bytes: value(metrics.memory_available_bytes),
                    usage_bytes: value(used),
                    rss_bytes: None,
                    page_faults: None,
                    major_page_faults: None,
                }),
                network: None,
                process: None,
                containers,
            }),
            windows: None,
        }))
    }
}
