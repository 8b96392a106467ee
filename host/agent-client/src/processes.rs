//! Process calls: exec into a container, signal, wait for an exit, stdin,
//! terminal size, and the two streams the agent serves (a process's output,
//! the guest's exit and OOM events). A process is named by a
//! [`ProcessRef`]: a container's init process or one exec'd into it.

use std::time::Duration;

use husk_proto::agent::v1::{
    event, CloseStdinRequest, Event, EventsRequest, ExecProcessRequest, ExitReason, ExitStatus,
    OutputChunk, ReadOutputRequest, ResizeTerminalRequest, SignalProcessRequest,
    WaitProcessRequest, WriteStdinRequest,
};
use husk_proto::{MAX_SPEC_BYTES, MAX_STDIO_CHUNK};
use oci_spec::runtime::Process;
use tonic::Streaming;

use crate::{AgentAddr, AgentClient, AgentClientError};

/// A container's init process, or a process exec'd into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub container_id: String,
    /// `None`: the container's init process.
    pub exec_id: Option<String>,
}

impl ProcessRef {
    pub fn init(container_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: None,
        }
    }

    pub fn exec(container_id: impl Into<String>, exec_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: Some(exec_id.into()),
        }
    }

    fn exec_field(&self) -> String {
        self.exec_id.clone().unwrap_or_default()
    }

    fn from_wire(container_id: String, exec_id: String) -> Self {
        ProcessRef {
            container_id,
            exec_id: (!exec_id.is_empty()).then_some(exec_id),
        }
    }
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.exec_id {
            None => write!(f, "container {}", self.container_id),
            Some(exec) => write!(f, "exec {exec} in container {}", self.container_id),
        }
    }
}

/// Who a signal reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalScope {
    /// The named process only.
    Process,
    /// Every process in the container's cgroup (init processes only).
    Container,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// exit(2) code, or 128 + signal when a signal killed it.
    pub code: i32,
    /// The signal that killed it; 0 when it exited.
    pub signal: u32,
    pub reason: ExitReason,
    /// Unix time of the exit in nanoseconds; 0 when the agent did not say.
    pub finished_at_ns: i64,
}

impl From<&ExitStatus> for Exit {
    fn from(status: &ExitStatus) -> Self {
        let reason = match status.kind() {
            // An API 3 agent only said it in words.
            ExitReason::Unspecified => match status.reason.as_str() {
                "Completed" => ExitReason::Completed,
                "Error" => ExitReason::Error,
                "Signaled" => ExitReason::Signaled,
                "OOMKilled" => ExitReason::OomKilled,
                _ if status.signal != 0 => ExitReason::Signaled,
                _ if status.exit_code == 0 => ExitReason::Completed,
                _ => ExitReason::Error,
            },
            known => known,
        };
        Exit {
            code: status.exit_code,
            signal: status.signal,
            reason,
            finished_at_ns: status.finished_at_ns,
        }
    }
}

/// Which of a process's outputs a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of a process's output (at most `MAX_STDIO_CHUNK` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// A process's output until both its stdout and stderr are closed.
pub struct OutputReader {
    stream: Streaming<OutputChunk>,
    addr: AgentAddr,
}

impl OutputReader {
    /// The next chunk; `Ok(None)` at the end.
    pub async fn next(&mut self) -> Result<Option<Output>, AgentClientError> {
        const CALL: &str = "ReadOutput";
        let chunk = self
            .stream
            .message()
            .await
            .map_err(|status| AgentClientError::Call {
                call: CALL,
                addr: self.addr.clone(),
                status,
            })?;
        let Some(chunk) = chunk else {
            return Ok(None);
        };
        if chunk.data.len() > MAX_STDIO_CHUNK {
            return Err(AgentClientError::TooLarge {
                call: CALL,
                addr: self.addr.clone(),
                what: "output chunk",
                len: chunk.data.len(),
                limit: MAX_STDIO_CHUNK,
            });
        }
        let stream = match chunk.stream() {
            husk_proto::agent::v1::OutputStream::Stderr => OutputStream::Stderr,
            _ => OutputStream::Stdout,
        };
        Ok(Some(Output {
            stream,
            data: chunk.data,
        }))
    }
}

/// Something that happened in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    Exited {
        process: ProcessRef,
        pid: u32,
        exit: Exit,
    },
    /// The container's cgroup OOM killer killed one of its processes.
    OomKilled { process: ProcessRef, pid: u32 },
}

/// The agent's events from the moment of the call; ends when the agent
/// shuts down or the connection breaks.
pub struct EventStream {
    stream: Streaming<Event>,
    addr: AgentAddr,
}

impl EventStream {
    /// The next event; `Ok(None)` when the stream ended. Events of kinds
    /// this client does not know are skipped.
    pub async fn next(&mut self) -> Result<Option<AgentEvent>, AgentClientError> {
        loop {
            let event = self
                .stream
                .message()
                .await
                .map_err(|status| AgentClientError::Call {
                    call: "Events",
                    addr: self.addr.clone(),
                    status,
                })?;
            let Some(event) = event else {
                return Ok(None);
            };
            let process = ProcessRef::from_wire(event.container_id, event.exec_id);
            let pid = event.pid;
            match event.kind {
                Some(event::Kind::Exit(status)) => {
                    let exit = Exit::from(&status);
                    return Ok(Some(AgentEvent::Exited { process, pid, exit }));
                }
                Some(event::Kind::Oom(_)) => {
                    return Ok(Some(AgentEvent::OomKilled { process, pid }))
                }
                None => continue,
            }
        }
    }
}

impl AgentClient {
    /// Runs `process` as exec `exec_id` in a running container; answers
    /// its pid.
    pub async fn exec(
        &self,
        target: &ProcessRef,
        process: &Process,
        stdin: bool,
    ) -> Result<u32, AgentClientError> {
        const CALL: &str = "ExecProcess";
        let Some(exec_id) = target.exec_id.clone() else {
            return Err(AgentClientError::Invalid {
                call: CALL,
                reason: format!("{target} names no exec id"),
            });
        };
        let json = serde_json::to_vec(process).map_err(|source| AgentClientError::Encode {
            call: CALL,
            what: "the process",
            source,
        })?;
        if json.len() > MAX_SPEC_BYTES {
            return Err(self.too_large(CALL, "the process", json.len(), MAX_SPEC_BYTES));
        }
        let request = self.request(ExecProcessRequest {
            container_id: target.container_id.clone(),
            exec_id,
            process_json: json,
            stdin,
        });
        let reply = self.bounded(CALL, self.raw().exec_process(request)).await?;
        Ok(reply.pid)
    }

    /// Sends `signal` to `target`, or with [`SignalScope::Container`] to
    /// every process of its container.
    pub async fn signal(
        &self,
        target: &ProcessRef,
        signal: i32,
        scope: SignalScope,
    ) -> Result<(), AgentClientError> {
        const CALL: &str = "SignalProcess";
        if !(1..=64).contains(&signal) {
            return Err(AgentClientError::Invalid {
                call: CALL,
                reason: format!("signal {signal} is not 1-64"),
            });
        }
        if scope == SignalScope::Container && target.exec_id.is_some() {
            return Err(AgentClientError::Invalid {
                call: CALL,
                reason: format!("{target}: only a container's init names the whole container"),
            });
        }
        let request = self.request(SignalProcessRequest {
            container_id: target.container_id.clone(),
            exec_id: target.exec_field(),
            signal: signal as u32,
            all: scope == SignalScope::Container,
        });
        self.bounded(CALL, self.raw().signal_process(request))
            .await?;
        Ok(())
    }

    /// Waits at most `deadline` for `target` to exit (at once if it has).
    pub async fn wait(
        &self,
        target: &ProcessRef,
        deadline: Duration,
    ) -> Result<Exit, AgentClientError> {
        const CALL: &str = "WaitProcess";
        let request = Self::request_with(
            WaitProcessRequest {
                container_id: target.container_id.clone(),
                exec_id: target.exec_field(),
            },
            deadline,
        );
        let reply = self
            .bounded_by(CALL, deadline, self.raw().wait_process(request))
            .await?;
        let status = reply.status.ok_or_else(|| {
            self.call_error(
                CALL,
                tonic::Status::internal("the agent answered without an exit status"),
            )
        })?;
        Ok(Exit::from(&status))
    }

    /// Writes `data` to the process's stdin, in chunks the agent accepts.
    pub async fn write_stdin(
        &self,
        target: &ProcessRef,
        data: &[u8],
    ) -> Result<(), AgentClientError> {
        for chunk in data.chunks(MAX_STDIO_CHUNK) {
            let request = self.request(WriteStdinRequest {
                container_id: target.container_id.clone(),
                exec_id: target.exec_field(),
                data: chunk.to_vec(),
            });
            self.bounded("WriteStdin", self.raw().write_stdin(request))
                .await?;
        }
        Ok(())
    }

    /// Closes the process's stdin (it reads end of file).
    pub async fn close_stdin(&self, target: &ProcessRef) -> Result<(), AgentClientError> {
        let request = self.request(CloseStdinRequest {
            container_id: target.container_id.clone(),
            exec_id: target.exec_field(),
        });
        self.bounded("CloseStdin", self.raw().close_stdin(request))
            .await?;
        Ok(())
    }

    /// Sets a terminal process's window size.
    pub async fn resize_terminal(
        &self,
        target: &ProcessRef,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentClientError> {
        let request = self.request(ResizeTerminalRequest {
            container_id: target.container_id.clone(),
            exec_id: target.exec_field(),
            rows,
            cols,
        });
        self.bounded("ResizeTerminal", self.raw().resize_terminal(request))
            .await?;
        Ok(())
    }

    /// Opens the process's output (the open is bounded by the call
    /// timeout; reading is not: output may take as long as the process).
    pub async fn read_output(&self, target: &ProcessRef) -> Result<OutputReader, AgentClientError> {
        // No grpc-timeout on the request: it would end the stream.
        let request = tonic::Request::new(ReadOutputRequest {
            container_id: target.container_id.clone(),
            exec_id: target.exec_field(),
        });
        let stream = self
            .bounded("ReadOutput", self.raw().read_output(request))
            .await?;
        Ok(OutputReader {
            stream,
            addr: self.addr.clone(),
        })
    }

    /// Opens the guest's event stream (bounded open, unbounded reading).
    pub async fn events(&self) -> Result<EventStream, AgentClientError> {
        let request = tonic::Request::new(EventsRequest {});
        let stream = self.bounded("Events", self.raw().events(request)).await?;
        Ok(EventStream {
            stream,
            addr: self.addr.clone(),
        })
    }
}
