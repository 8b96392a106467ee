//! The engine's cgroup calls: new limits and statistics.

use std::sync::Arc;

use husk_proto::agent::v1 as pb;

use super::cgroups::{self, Cgroup};
use super::{spec, Engine, EngineError};

impl Engine {
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), EngineError> {
        let container = self.get(id)?;
        let resources = spec::parse_resources(resources_json)?;
        let cgroup = container.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.apply(&resources))
            .await
            .map_err(|e| EngineError::Internal(format!("update task failed: {e}")))??;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<pb::CgroupStats, EngineError> {
        let cgroup: Arc<Cgroup> = self.get(id)?.cgroup.clone();
        let s = tokio::task::spawn_blocking(move || cgroup.stats())
            .await
            .map_err(|e| EngineError::Internal(format!("stats task failed: {e}")))??;
        Ok(pb::CgroupStats {
            cpu_usage_usec: s.cpu_usage_usec,
            cpu_user_usec: s.cpu_user_usec,
            cpu_system_usec: s.cpu_system_usec,
            cpu_nr_throttled: s.cpu_nr_throttled,
            cpu_throttled_usec: s.cpu_throttled_usec,
            memory_usage_bytes: s.memory_usage_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            memory_working_set_bytes: s.memory_working_set_bytes,
            memory_anon_bytes: s.memory_anon_bytes,
            memory_file_bytes: s.memory_file_bytes,
            memory_oom_kills: s.memory_oom_kills,
            pids_current: s.pids_current,
            pids_limit: s.pids_limit,
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
            io_read_ops: s.io_read_ops,
            io_write_ops: s.io_write_ops,
            cgroup_version: match s.version {
                cgroups::CgroupVersion::V1 => "v1",
                cgroups::CgroupVersion::V2 => "v2",
            }
            .into(),
            cgroup: match s.version {
                cgroups::CgroupVersion::V1 => pb::CgroupVersion::V1,
                cgroups::CgroupVersion::V2 => pb::CgroupVersion::V2,
            } as i32,
        })
    }
}
