//! ExecSync: run a command in a running container and collect its output.

use std::sync::Arc;
use std::time::Duration;

use husk_agent_client::{OutputStream, ProcessRef, SignalScope};

use super::error::{AgentResultExt, Result, RuntimeError};
use super::ids::new_id;
use super::Runtime;
use crate::deadlines::EXEC_SYNC_DEFAULT;
use crate::spec;
use crate::state::ContainerState;

/// Output kept per stream; the rest is dropped (kubelet's probes read
/// little, and a guest must not make the daemon buffer without bound).
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Runtime {
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(RuntimeError::invalid("cmd", "is empty"));
        }
        let container = self.container(id)?;
        let record = container.record();
        if record.state != ContainerState::Running {
            return Err(RuntimeError::wrong_state(
                "container",
                &container.id,
                "is not running",
            ));
        }
        let (_, agent) = self.running_pod(&container)?;
        let process = spec::exec_process(&record.process, &cmd)?;
        let target = ProcessRef::exec(&container.id, &new_id()[..16]);
        agent
            .exec(&target, &process, false)
            .await
            .doing("start the command")?;
        let timeout = if timeout.is_zero() {
            EXEC_SYNC_DEFAULT
        } else {
            timeout
        };
        let collect = async {
            let mut out = ExecOutput::default();
            if let Ok(mut output) = agent.read_output(&target).await {
                while let Ok(Some(chunk)) = output.next().await {
                    let buffer = match chunk.stream {
                        OutputStream::Stderr => &mut out.stderr,
                        OutputStream::Stdout => &mut out.stdout,
                    };
                    let room = MAX_EXEC_OUTPUT.saturating_sub(buffer.len());
                    buffer.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
                }
            }
            // Bounded by the outer timeout.
            let exit = agent.wait(&target, timeout).await;
            (out, exit)
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok((mut out, Ok(exit))) => {
                out.exit_code = exit.code;
                Ok(out)
            }
            Ok((_, Err(error))) if !error.is_timeout() => Err(error).doing("wait for the command"),
            _ => {
                let _ = agent
                    .signal(&target, libc::SIGKILL, SignalScope::Process)
                    .await;
                Err(RuntimeError::Timeout {
                    what: format!("command {cmd:?} did not finish"),
                    after: timeout,
                })
            }
        }
    }
}
