//! The `husk.agent.v1.Agent` gRPC service.

use std::time::{Duration, Instant};

use std::pin::Pin;
use std::sync::Arc;

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::agent_server::Agent;
use husk_proto::agent::v1::{
    HealthRequest, HealthResponse, ReadFileRequest, ReadFileResponse, ShutdownRequest,
    ShutdownResponse, WriteFileRequest, WriteFileResponse,
};
use husk_proto::{API_VERSION, MAX_STDIO_CHUNK};
use nix::time::{clock_gettime, ClockId};
use tokio::sync::watch;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::files::SharedFolder;
use crate::sandbox::Sandbox;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The agent's crate version, reported by Health and the ready line.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves the agent API. Shutdown only raises the stop flag: the server then
/// finishes in-flight calls (so this answer reaches the host) before `main`
/// powers off.
pub struct AgentService {
    started: Instant,
    stop: watch::Sender<bool>,
    shared: SharedFolder,
    engine: Arc<Engine>,
    sandbox: Sandbox,
}

impl AgentService {
    pub fn new(
        started: Instant,
        stop: watch::Sender<bool>,
        shared: SharedFolder,
        engine: Arc<Engine>,
        sandbox: Sandbox,
    ) -> Self {
        Self {
            started,
            stop,
            shared,
            engine,
            sandbox,
        }
    }
}

/// Runs a call that changes the guest (containers, processes, links) on
/// its own task: a client that hangs up mid-call drops this future, not the
/// work, so nothing is left half-made or untracked.
async fn run_to_completion<T, E>(
    call: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: Into<Status> + Send + 'static,
{
    tokio::spawn(call)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
        .map_err(Into::into)
}

fn reply<T>(value: T) -> Result<Response<T>, Status> {
    Ok(Response::new(value))
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

    async fn setup_sandbox(
        &self,
        request: Request<pb::SetupSandboxRequest>,
    ) -> Result<Response<pb::SetupSandboxResponse>, Status> {
        let sandbox = self.sandbox.clone();
        let request = request.into_inner();
        tokio::task::spawn_blocking(move || sandbox.setup(&request))
            .await
            .map_err(|e| Status::internal(format!("sandbox task failed: {e}")))?
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn setup_network(
        &self,
        request: Request<pb::SetupNetworkRequest>,
    ) -> Result<Response<pb::SetupNetworkResponse>, Status> {
        let request = request.into_inner();
        // Its own task, so a host that gives up on the call does not leave
        // a link half-configured.
        run_to_completion(async move { crate::network::setup(&request).await }).await?;
        reply(pb::SetupNetworkResponse {})
    }

    async fn create_container(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let engine = self.engine.clone();
        let pid = run_to_completion(async move { engine.create(request).await }).await?;
        reply(pb::CreateContainerResponse { pid })
    }

    async fn start_container(
        &self,
        request: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let engine = self.engine.clone();
        run_to_completion(async move { engine.start(&id).await }).await?;
        reply(pb::StartContainerResponse {})
    }

    async fn signal_process(
        &self,
        request: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::SignalProcessResponse>, Status> {
        self.engine.signal(&request.into_inner())?;
        reply(pb::SignalProcessResponse {})
    }

    async fn wait_process(
        &self,
        request: Request<pb::WaitProcessRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        let r = request.into_inner();
        let status = self.engine.wait(&r.container_id, &r.exec_id).await?;
        reply(pb::WaitProcessResponse {
            status: Some(status),
        })
    }

    async fn events(
        &self,
        _request: Request<pb::EventsRequest>,
    ) -> Result<Response<BoxStream<pb::Event>>, Status> {
        let stream = BroadcastStream::new(self.engine.subscribe())
            .map(|event| event.map_err(|e| Status::data_loss(format!("events were dropped: {e}"))));
        reply(Box::pin(stream) as BoxStream<pb::Event>)
    }

    async fn delete_container(
        &self,
        request: Request<pb::DeleteContainerRequest>,
    ) -> Result<Response<pb::DeleteContainerResponse>, Status> {
        let r = request.into_inner();
        let engine = self.engine.clone();
        run_to_completion(async move { engine.delete(&r.container_id, r.force).await }).await?;
        reply(pb::DeleteContainerResponse {})
    }

    async fn container_status(
        &self,
        request: Request<pb::ContainerStatusRequest>,
    ) -> Result<Response<pb::ContainerStatusResponse>, Status> {
        let status = self.engine.status(&request.into_inner().container_id)?;
        reply(pb::ContainerStatusResponse {
            status: Some(status),
        })
    }

    async fn list_containers(
        &self,
        _request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        reply(pb::ListContainersResponse {
            containers: self.engine.list(),
        })
    }

    async fn update_container(
        &self,
        request: Request<pb::UpdateContainerRequest>,
    ) -> Result<Response<pb::UpdateContainerResponse>, Status> {
        let r = request.into_inner();
        self.engine
            .update(&r.container_id, &r.resources_json)
            .await?;
        reply(pb::UpdateContainerResponse {})
    }

    async fn container_stats(
        &self,
        request: Request<pb::ContainerStatsRequest>,
    ) -> Result<Response<pb::ContainerStatsResponse>, Status> {
        let stats = self
            .engine
            .stats(&request.into_inner().container_id)
            .await?;
        reply(pb::ContainerStatsResponse {
            stats: Some(stats),
            timestamp_ns: crate::engine::now_ns(),
        })
    }

    async fn exec_process(
        &self,
        request: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecProcessResponse>, Status> {
        let request = request.into_inner();
        let engine = self.engine.clone();
        let pid = run_to_completion(async move { engine.exec(request).await }).await?;
        reply(pb::ExecProcessResponse { pid })
    }

    async fn write_stdin(
        &self,
        request: Request<pb::WriteStdinRequest>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        let r = request.into_inner();
        if r.data.len() > MAX_STDIO_CHUNK {
            return Err(Status::invalid_argument(format!(
                "data: {} bytes is above the limit of {MAX_STDIO_CHUNK}",
                r.data.len()
            )));
        }
        self.engine
            .write_stdin(&r.container_id, &r.exec_id, &r.data)
            .await?;
        reply(pb::WriteStdinResponse {})
    }

    async fn close_stdin(
        &self,
        request: Request<pb::CloseStdinRequest>,
    ) -> Result<Response<pb::CloseStdinResponse>, Status> {
        let r = request.into_inner();
        self.engine.close_stdin(&r.container_id, &r.exec_id).await?;
        reply(pb::CloseStdinResponse {})
    }

    async fn read_output(
        &self,
        request: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<BoxStream<pb::OutputChunk>>, Status> {
        let r = request.into_inner();
        let rx = self.engine.read_output(&r.container_id, &r.exec_id)?;
        reply(Box::pin(ReceiverStream::new(rx)) as BoxStream<pb::OutputChunk>)
    }

    async fn resize_terminal(
        &self,
        request: Request<pb::ResizeTerminalRequest>,
    ) -> Result<Response<pb::ResizeTerminalResponse>, Status> {
        let r = request.into_inner();
        self.engine
            .resize(&r.container_id, &r.exec_id, r.rows, r.cols)?;
        reply(pb::ResizeTerminalResponse {})
    }

    async fn guest_metrics(
        &self,
        _request: Request<pb::GuestMetricsRequest>,
    ) -> Result<Response<pb::GuestMetricsResponse>, Status> {
        let containers = self.engine.count();
        tokio::task::spawn_blocking(move || crate::metrics::read(containers))
            .await
            .map_err(|e| Status::internal(format!("metrics task failed: {e}")))?
            .map(Response::new)
            .map_err(|e| Status::internal(format!("reading /proc: {e}")))
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
    use crate::engine::EngineConfig;
    use crate::reaper::Reaper;

    fn service(started: Instant, stop: watch::Sender<bool>) -> AgentService {
        let engine = Engine::new(
            Reaper::default(),
            EngineConfig {
                root: "/nonexistent".into(),
                layer_root: "/nonexistent".into(),
                allowed_mount_roots: vec![],
            },
        );
        AgentService::new(
            started,
            stop,
            SharedFolder::new("/nonexistent"),
            Arc::new(engine),
            Sandbox::new(std::path::Path::new("/nonexistent")),
        )
    }

    #[tokio::test]
    async fn health_reports_versions_and_uptime() {
        let (stop, _) = watch::channel(false);
        let started = Instant::now() - Duration::from_millis(1500);
        let svc = service(started, stop);
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
        let svc = service(Instant::now(), stop);
        assert!(!*stopped.borrow_and_update());
        svc.shutdown(Request::new(ShutdownRequest {}))
            .await
            .unwrap();
        assert!(*stopped.borrow_and_update());
    }
}
