//! The gRPC face of a [`FakeAgent`]: each call checks the script (fail,
//! hang, stopped), then reads or changes the fake guest.

use std::collections::VecDeque;
use std::ops::DerefMut;
use std::path::PathBuf;
use std::pin::Pin;

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::agent_server::Agent;
use oci_spec::runtime::{LinuxResources, Process, Spec};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{no_container, no_exec, now_ns, FakeAgent, FakeContainer, FakeProcess, SIGKILL};

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A [`FakeAgent`] being served; stopping it (or dropping it) makes every
/// call fail as a VM that is gone would, ends open streams and removes the
/// socket.
pub struct FakeServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
}

impl FakeServer {
    pub(super) fn new(path: PathBuf, stop: watch::Sender<bool>) -> Self {
        FakeServer { path, stop }
    }

    /// Stops serving (the same as dropping it, said out loud).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Connections tonic already accepted live on in their own tasks
        // until the client drops them; the service refuses their calls.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The gRPC face of a [`FakeAgent`] for one server.
pub(super) struct FakeService {
    agent: FakeAgent,
    stopped: watch::Receiver<bool>,
}

impl FakeService {
    pub(super) fn new(agent: FakeAgent, stopped: watch::Receiver<bool>) -> Self {
        FakeService { agent, stopped }
    }

    /// Every call passes here first: refused once the server stopped,
    /// failed or hung as the test scripted, recorded otherwise.
    async fn gate(&self, call: &str) -> Result<(), Status> {
        if *self.stopped.borrow() {
            return Err(Status::unavailable("the fake agent stopped serving"));
        }
        let hung = {
            let mut guest = self.agent.guest();
            guest.calls.push(call.to_string());
            if let Some(status) = guest.failures.get_mut(call).and_then(VecDeque::pop_front) {
                return Err(status);
            }
            guest.hung.contains(call)
        };
        if hung {
            let mut stopped = self.stopped.clone();
            let _ = stopped.wait_for(|s| *s).await;
            return Err(Status::unavailable("the fake agent stopped serving"));
        }
        Ok(())
    }

    /// Forwards `source` (a receiver, or a guard holding one) until it
    /// ends, the reader goes or the server stops.
    fn forward<T: Send + 'static>(
        &self,
        mut source: impl DerefMut<Target = mpsc::UnboundedReceiver<Result<T, Status>>> + Send + 'static,
    ) -> BoxStream<T> {
        let (sink, out) = mpsc::unbounded_channel();
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    item = source.recv() => match item {
                        Some(item) => if sink.send(item).is_err() { return },
                        None => return,
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = sink.closed() => return,
                }
            }
        });
        Box::pin(UnboundedReceiverStream::new(out))
    }
}

fn bad_json(what: &str) -> impl FnOnce(serde_json::Error) -> Status + '_ {
    move |e| Status::invalid_argument(format!("{what} is not valid JSON: {e}"))
}

#[tonic::async_trait]
impl Agent for FakeService {
    async fn health(&self, _: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        self.gate("Health").await?;
        let api_version = self
            .agent
            .guest()
            .api_version
            .unwrap_or(husk_proto::API_VERSION);
        Ok(Response::new(pb::HealthResponse {
            agent_version: "fake".into(),
            api_version,
            agent_uptime_ms: 1,
            system_uptime_ms: 1,
        }))
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Reply<pb::ShutdownResponse> {
        self.gate("Shutdown").await?;
        self.agent.inner.shutdown.0.send_replace(true);
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Reply<pb::ReadFileResponse> {
        self.gate("ReadFile").await?;
        let path = request.into_inner().path;
        let data = self.agent.guest().files.get(&path).cloned();
        let data = data.ok_or_else(|| Status::not_found(format!("{path}: no such file")))?;
        Ok(Response::new(pb::ReadFileResponse { data }))
    }

    async fn write_file(
        &self,
        request: Request<pb::WriteFileRequest>,
    ) -> Reply<pb::WriteFileResponse> {
        self.gate("WriteFile").await?;
        let request = request.into_inner();
        self.agent.guest().files.insert(request.path, request.data);
        Ok(Response::new(pb::WriteFileResponse {}))
    }

    async fn setup_sandbox(
        &self,
        request: Request<pb::SetupSandboxRequest>,
    ) -> Reply<pb::SetupSandboxResponse> {
        self.gate("SetupSandbox").await?;
        self.agent.guest().sandbox = Some(request.into_inner());
        Ok(Response::new(pb::SetupSandboxResponse {
            hosts_path: "/run/husk/sandbox/hosts".into(),
            resolv_conf_path: "/run/husk/sandbox/resolv.conf".into(),
            hostname_path: "/run/husk/sandbox/hostname".into(),
        }))
    }

    async fn setup_network(
        &self,
        request: Request<pb::SetupNetworkRequest>,
    ) -> Reply<pb::SetupNetworkResponse> {
        self.gate("SetupNetwork").await?;
        self.agent.guest().network = Some(request.into_inner());
        Ok(Response::new(pb::SetupNetworkResponse {}))
    }

    async fn create_container(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Reply<pb::CreateContainerResponse> {
        self.gate("CreateContainer").await?;
        let request = request.into_inner();
        let spec: Spec =
            serde_json::from_slice(&request.oci_spec_json).map_err(bad_json("oci_spec_json"))?;
        let pid = self.agent.next_pid();
        let mut guest = self.agent.guest();
        if guest.containers.contains_key(&request.container_id) {
            return Err(Status::already_exists(format!(
                "container {:?} already exists",
                request.container_id
            )));
        }
        let container = FakeContainer::new(Some(spec), request.layers, pid, request.stdin);
        guest.containers.insert(request.container_id, container);
        Ok(Response::new(pb::CreateContainerResponse { pid }))
    }

    async fn start_container(
        &self,
        request: Request<pb::StartContainerRequest>,
    ) -> Reply<pb::StartContainerResponse> {
        self.gate("StartContainer").await?;
        let id = request.into_inner().container_id;
        let mut guest = self.agent.guest();
        let container = guest
            .containers
            .get_mut(&id)
            .ok_or_else(|| no_container(&id))?;
        if container.state != pb::ContainerState::Created || container.init.exited().is_some() {
            return Err(Status::failed_precondition(format!(
                "container {id:?} already started"
            )));
        }
        container.state = pb::ContainerState::Running;
        container.started_at_ns = now_ns();
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn signal_process(
        &self,
        request: Request<pb::SignalProcessRequest>,
    ) -> Reply<pb::SignalProcessResponse> {
        self.gate("SignalProcess").await?;
        let request = request.into_inner();
        if !(1..=64).contains(&request.signal) {
            return Err(Status::invalid_argument(format!(
                "signal: {} is not a signal number this agent knows",
                request.signal
            )));
        }
        if request.all {
            if !request.exec_id.is_empty() {
                return Err(Status::invalid_argument(
                    "all: cannot be combined with exec_id",
                ));
            }
            self.agent
                .deliver_all(&request.container_id, request.signal)?;
        } else {
            let exec = (!request.exec_id.is_empty()).then_some(request.exec_id.as_str());
            self.agent
                .deliver(&request.container_id, exec, request.signal)?;
        }
        Ok(Response::new(pb::SignalProcessResponse {}))
    }

    async fn wait_process(
        &self,
        request: Request<pb::WaitProcessRequest>,
    ) -> Reply<pb::WaitProcessResponse> {
        self.gate("WaitProcess").await?;
        let request = request.into_inner();
        let mut exit = {
            let guest = self.agent.guest();
            let container = guest
                .containers
                .get(&request.container_id)
                .ok_or_else(|| no_container(&request.container_id))?;
            let process = if request.exec_id.is_empty() {
                &container.init
            } else {
                container
                    .execs
                    .get(&request.exec_id)
                    .ok_or_else(|| no_exec(&request.container_id, &request.exec_id))?
            };
            process.exit.subscribe()
        };
        let mut stopped = self.stopped.clone();
        let status = tokio::select! {
            status = exit.wait_for(Option::is_some) => match status {
                Ok(status) => status.clone().expect("checked"),
                Err(_) => return Err(Status::not_found("the process was removed")),
            },
            _ = stopped.wait_for(|s| *s) => {
                return Err(Status::unavailable("the fake agent stopped serving"))
            }
        };
        if !request.exec_id.is_empty() {
            if let Some(container) = self.agent.guest().containers.get_mut(&request.container_id) {
                container.execs.remove(&request.exec_id);
            }
        }
        Ok(Response::new(pb::WaitProcessResponse {
            status: Some(status),
        }))
    }

    async fn events(&self, _: Request<pb::EventsRequest>) -> Reply<BoxStream<pb::Event>> {
        self.gate("Events").await?;
        let (sink, source) = mpsc::unbounded_channel();
        self.agent.guest().subscribers.push(sink);
        Ok(Response::new(self.forward(Box::new(source))))
    }

    async fn delete_container(
        &self,
        request: Request<pb::DeleteContainerRequest>,
    ) -> Reply<pb::DeleteContainerResponse> {
        self.gate("DeleteContainer").await?;
        let request = request.into_inner();
        let id = request.container_id;
        let running = {
            let guest = self.agent.guest();
            let container = guest.containers.get(&id).ok_or_else(|| no_container(&id))?;
            container.state == pb::ContainerState::Running
        };
        if running && !request.force {
            return Err(Status::failed_precondition(format!(
                "container {id:?} is running (stop it first, or delete with force)"
            )));
        }
        if running {
            self.agent.deliver_all(&id, SIGKILL)?;
        }
        self.agent.guest().containers.remove(&id);
        Ok(Response::new(pb::DeleteContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<pb::ContainerStatusRequest>,
    ) -> Reply<pb::ContainerStatusResponse> {
        self.gate("ContainerStatus").await?;
        let id = request.into_inner().container_id;
        let guest = self.agent.guest();
        let container = guest.containers.get(&id).ok_or_else(|| no_container(&id))?;
        Ok(Response::new(pb::ContainerStatusResponse {
            status: Some(container.status(&id)),
        }))
    }

    async fn list_containers(
        &self,
        _: Request<pb::ListContainersRequest>,
    ) -> Reply<pb::ListContainersResponse> {
        self.gate("ListContainers").await?;
        let guest = self.agent.guest();
        let containers = guest
            .containers
            .iter()
            .map(|(id, container)| container.status(id))
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn update_container(
        &self,
        request: Request<pb::UpdateContainerRequest>,
    ) -> Reply<pb::UpdateContainerResponse> {
        self.gate("UpdateContainer").await?;
        let request = request.into_inner();
        let resources: LinuxResources =
            serde_json::from_slice(&request.resources_json).map_err(bad_json("resources_json"))?;
        let id = request.container_id;
        let mut guest = self.agent.guest();
        let container = guest
            .containers
            .get_mut(&id)
            .ok_or_else(|| no_container(&id))?;
        container.resources = Some(resources);
        Ok(Response::new(pb::UpdateContainerResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<pb::ContainerStatsRequest>,
    ) -> Reply<pb::ContainerStatsResponse> {
        self.gate("ContainerStats").await?;
        let id = request.into_inner().container_id;
        let guest = self.agent.guest();
        let container = guest.containers.get(&id).ok_or_else(|| no_container(&id))?;
        let limit = container
            .resources
            .as_ref()
            .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
            .map_or(0, |l| l.max(0) as u64);
        Ok(Response::new(pb::ContainerStatsResponse {
            stats: Some(pb::CgroupStats {
                cpu_usage_usec: 1000,
                memory_usage_bytes: 4 << 20,
                memory_working_set_bytes: 3 << 20,
                memory_limit_bytes: limit,
                pids_current: 1 + container.execs.len() as u64,
                cgroup_version: "v2".into(),
                cgroup: pb::CgroupVersion::V2 as i32,
                ..Default::default()
            }),
            timestamp_ns: now_ns(),
        }))
    }

    async fn exec_process(
        &self,
        request: Request<pb::ExecProcessRequest>,
    ) -> Reply<pb::ExecProcessResponse> {
        self.gate("ExecProcess").await?;
        let request = request.into_inner();
        let process: Process =
            serde_json::from_slice(&request.process_json).map_err(bad_json("process_json"))?;
        let args = process.args().clone().unwrap_or_default();
        let (id, exec_id) = (request.container_id, request.exec_id);
        let pid = self.agent.next_pid();
        {
            let mut guest = self.agent.guest();
            let container = guest
                .containers
                .get_mut(&id)
                .ok_or_else(|| no_container(&id))?;
            if container.state != pb::ContainerState::Running {
                return Err(Status::failed_precondition(format!(
                    "container {id:?} is not running"
                )));
            }
            if container.execs.contains_key(&exec_id) {
                return Err(Status::already_exists(format!(
                    "container {id:?} already has a process {exec_id:?}"
                )));
            }
            let stdin = request.stdin || process.terminal().unwrap_or(false);
            container
                .execs
                .insert(exec_id.clone(), FakeProcess::new(pid, stdin));
        }
        self.agent.run_exec(&id, &exec_id, &args);
        Ok(Response::new(pb::ExecProcessResponse { pid }))
    }

    async fn write_stdin(
        &self,
        request: Request<pb::WriteStdinRequest>,
    ) -> Reply<pb::WriteStdinResponse> {
        self.gate("WriteStdin").await?;
        let request = request.into_inner();
        self.with_process(&request.container_id, &request.exec_id, |process| {
            let stdin = process
                .stdin
                .as_mut()
                .ok_or_else(|| Status::failed_precondition("the process has no stdin"))?;
            stdin.extend_from_slice(&request.data);
            Ok(())
        })?;
        Ok(Response::new(pb::WriteStdinResponse {}))
    }

    async fn close_stdin(
        &self,
        request: Request<pb::CloseStdinRequest>,
    ) -> Reply<pb::CloseStdinResponse> {
        self.gate("CloseStdin").await?;
        let request = request.into_inner();
        self.with_process(&request.container_id, &request.exec_id, |_| Ok(()))?;
        Ok(Response::new(pb::CloseStdinResponse {}))
    }

    async fn read_output(
        &self,
        request: Request<pb::ReadOutputRequest>,
    ) -> Reply<BoxStream<pb::OutputChunk>> {
        self.gate("ReadOutput").await?;
        let request = request.into_inner();
        let reader = self.with_process(&request.container_id, &request.exec_id, |process| {
            process
                .reader
                .clone()
                .try_lock_owned()
                .map_err(|_| Status::failed_precondition("the output already has a reader"))
        })?;
        Ok(Response::new(self.forward(reader)))
    }

    async fn resize_terminal(
        &self,
        request: Request<pb::ResizeTerminalRequest>,
    ) -> Reply<pb::ResizeTerminalResponse> {
        self.gate("ResizeTerminal").await?;
        let request = request.into_inner();
        self.with_process(&request.container_id, &request.exec_id, |process| {
            process.terminal_size = Some((request.rows, request.cols));
            Ok(())
        })?;
        Ok(Response::new(pb::ResizeTerminalResponse {}))
    }

    async fn guest_metrics(
        &self,
        _: Request<pb::GuestMetricsRequest>,
    ) -> Reply<pb::GuestMetricsResponse> {
        self.gate("GuestMetrics").await?;
        let containers = self.agent.guest().containers.len() as u32;
        Ok(Response::new(pb::GuestMetricsResponse {
            memory_total_bytes: 128 << 20,
            memory_available_bytes: 100 << 20,
            memory_free_bytes: 90 << 20,
            processes: 1 + containers,
            containers,
            uptime_ms: 1,
            ..Default::default()
        }))
    }
}

impl FakeService {
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        action: impl FnOnce(&mut FakeProcess) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut guest = self.agent.guest();
        let container = guest
            .containers
            .get_mut(id)
            .ok_or_else(|| no_container(id))?;
        let process = if exec_id.is_empty() {
            &mut container.init
        } else {
            container
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| no_exec(id, exec_id))?
        };
        action(process)
    }
}
