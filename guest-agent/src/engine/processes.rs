//! The engine's process calls: exec into a running container, signals,
//! waits, stdin, output and terminals.

use std::path::PathBuf;
use std::sync::Arc;

use husk_proto::agent::v1 as pb;
use tokio::sync::mpsc;

use super::container::Container;
use super::init::protocol::{InitConfig, InitMode};
use super::launch::{self, launch, PidNamespace};
use super::process::{ExitContext, TrackedProcess};
use super::{spec, stdio, Engine, EngineError};

impl Engine {
    pub async fn exec(&self, request: pb::ExecProcessRequest) -> Result<u32, EngineError> {
        let container = self.get(&request.container_id)?;
        spec::check_id("exec_id", &request.exec_id)?;
        let process = spec::parse_process(&request.process_json)?;
        if container.state() != pb::ContainerState::Running {
            return Err(EngineError::State(
                container.id.clone(),
                "is not running".into(),
            ));
        }
        container.reserve_exec(&request.exec_id)?;
        let exec_id = request.exec_id.clone();
        let started = self.start_exec(&container, request, process).await;
        container.finish_exec(&exec_id, started.as_ref().ok().map(|(_, p)| p.clone()));
        started.map(|(pid, _)| pid)
    }

    /// Launches an exec whose id is reserved; returns its pid and handle.
    async fn start_exec(
        &self,
        container: &Arc<Container>,
        request: pb::ExecProcessRequest,
        process: oci_spec::runtime::Process,
    ) -> Result<(u32, Arc<TrackedProcess>), EngineError> {
        let target = container.init.pid;
        let pid_ns = if container.has_pid_namespace() {
            PidNamespace::Join(PathBuf::from(format!("/proc/{target}/ns/pid")))
        } else {
            PidNamespace::Same
        };
        let terminal = process.terminal().unwrap_or(false);
        let config = InitConfig {
            spec: container.spec.clone(),
            process,
            mode: InitMode::Exec { target_pid: target },
        };
        let reaper = self.reaper.clone();
        let cgroup = container.cgroup.clone();
        let launched = tokio::task::spawn_blocking(move || {
            let launched = launch(&reaper, pid_ns, terminal, request.stdin, &cgroup, &config)?;
            let launch::Launched {
                pid,
                exit,
                stdio,
                gate,
            } = launched;
            gate.start()?;
            Ok::<_, EngineError>((pid, exit, stdio))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("exec task failed: {e}")))??;
        let (pid, exit, stdio) = launched;
        let tracked = TrackedProcess::new(
            pid,
            stdio,
            exit,
            ExitContext {
                container_id: container.id.clone(),
                exec_id: request.exec_id.clone(),
                cgroup: container.cgroup.clone(),
                events: self.events.clone(),
            },
        )
        .map_err(|e| EngineError::Io("registering stdio".into(), e))?;
        Ok((pid, tracked))
    }

    pub fn signal(&self, request: &pb::SignalProcessRequest) -> Result<(), EngineError> {
        let signal = i32::try_from(request.signal)
            .ok()
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
            .ok_or_else(|| {
                EngineError::Spec(spec::SpecError::invalid(
                    "signal",
                    format!("{} is not a signal number this agent knows", request.signal),
                ))
            })?;
        if request.all {
            if !request.exec_id.is_empty() {
                return Err(EngineError::Spec(spec::SpecError::invalid(
                    "all",
                    "cannot be combined with exec_id",
                )));
            }
            let container = self.get(&request.container_id)?;
            return container
                .cgroup
                .signal_all(signal)
                .map_err(EngineError::from);
        }
        let process = self.process(&request.container_id, &request.exec_id)?;
        if process.exit_status().is_some() {
            return Err(EngineError::State(
                request.container_id.clone(),
                "process has already exited".into(),
            ));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid as i32), signal)
            .map_err(|e| EngineError::Io("kill".into(), e.into()))
    }

    /// Waits for a process's exit; an exec is forgotten once waited for.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<pb::ExitStatus, EngineError> {
        let process = self.process(id, exec_id)?;
        let status = process.wait().await;
        if !exec_id.is_empty() {
            if let Ok(container) = self.get(id) {
                container.forget_exec(exec_id, &process);
            }
        }
        Ok(status)
    }

    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<(), EngineError> {
        Ok(self.process(id, exec_id)?.write_stdin(data).await?)
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), EngineError> {
        Ok(self.process(id, exec_id)?.close_stdin().await?)
    }

    pub fn read_output(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<mpsc::Receiver<Result<pb::OutputChunk, tonic::Status>>, EngineError> {
        Ok(self.process(id, exec_id)?.read_output()?)
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<(), EngineError> {
        let bad = |f: &str| EngineError::Spec(spec::SpecError::invalid(f, "must be 1..=65535"));
        let rows = u16::try_from(rows)
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("rows"))?;
        let cols = u16::try_from(cols)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| bad("cols"))?;
        let process = self.process(id, exec_id)?;
        stdio::resize(&process.terminal, rows, cols)
            .map_err(|e| EngineError::State(id.to_owned(), e.to_string()))
    }
}
