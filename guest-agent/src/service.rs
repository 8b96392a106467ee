//! The `husk.agent.v1.Agent` gRPC service.

use std::time::{Duration, Instant};

use husk_proto::agent::v1::agent_server::Agent;
use husk_proto::agent::v1::{
    HealthRequest, HealthResponse, ReadFileRequest, ReadFileResponse, ShutdownRequest,
    ShutdownResponse, WriteFileRequest, WriteFileResponse,
};
use husk_proto::API_VERSION;
use nix::time::{clock_gettime, ClockId};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::files::SharedFolder;

/// The agent's crate version, reported by Health and the ready line.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves the agent API. Shutdown only raises the stop flag: the server then
/// finishes in-flight calls (so this answer reaches the host) before `main`
/// powers off.
pub struct AgentService {
    started: Instant,
    stop: watch::Sender<bool>,
    shared: SharedFolder,
}

impl AgentService {
    pub fn new(started: Instant, stop: watch::Sender<bool>, shared: SharedFolder) -> Self {
        Self {
            started,
            stop,
            shared,
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            agent_version: AGENT_VERSION.to_owned(),
            api_version: API_VERSION,
            agent_uptime_ms: millis(self.started.elapsed()),
            system_uptime_ms: system_uptime().map(millis).unwrap_or(0),
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.stop.send_replace(true);
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ReadFileResponse>, Status> {
        let ReadFileRequest { path, max_bytes } = request.into_inner();
        let shared = self.shared.clone();
        // File I/O blocks (virtio-fs goes out to the host): off the reactor.
        let data = blocking(move || shared.read(&path, max_bytes)).await??;
        Ok(Response::new(ReadFileResponse { data }))
    }

    async fn write_file(
        &self,
        request: Request<WriteFileRequest>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let WriteFileRequest { path, data, mode } = request.into_inner();
        let shared = self.shared.clone();
        blocking(move || shared.write(&path, &data, mode)).await??;
        Ok(Response::new(WriteFileResponse {}))
    }
}

/// Runs `f` on tokio's blocking pool; a panic there becomes INTERNAL.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::files::FileError> + Send + 'static,
) -> Result<Result<T, Status>, Status> {
    tokio::task::spawn_blocking(move || f().map_err(Status::from))
        .await
        .map_err(|e| Status::internal(format!("file task failed: {e}")))
}

/// Time since the kernel booted, including suspend (CLOCK_BOOTTIME).
fn system_uptime() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(Duration::from)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_reports_versions_and_uptime() {
        let (stop, _) = watch::channel(false);
        let started = Instant::now() - Duration::from_millis(1500);
        let svc = AgentService::new(started, stop, SharedFolder::new("/nonexistent"));
        let health = svc
            .health(Request::new(HealthRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(health.api_version, API_VERSION);
        assert!(health.agent_uptime_ms >= 1500, "{health:?}");
        assert!(
            health.system_uptime_ms >= health.agent_uptime_ms,
            "{health:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_answers_and_raises_the_stop_flag() {
        let (stop, mut stopped) = watch::channel(false);
        let svc = AgentService::new(Instant::now(), stop, SharedFolder::new("/nonexistent"));
        assert!(!*stopped.borrow_and_update());
        svc.shutdown(Request::new(ShutdownRequest {}))
            .await
            .unwrap();
        assert!(*stopped.borrow_and_update());
    }
}
