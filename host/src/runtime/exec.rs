//! ExecSync: run a command in a running container and collect its output.

use std::sync::Arc;
use std::time::Duration;

use husk_proto::agent::v1::{
    ExecProcessRequest, OutputStream, ReadOutputRequest, SignalProcessRequest, WaitProcessRequest,
};

use super::agent::SHORT_CALL;
use super::error::{Result, RuntimeError};
use super::ids::new_id;
use super::Runtime;
use crate::state::ContainerState;

/// Output kept per stream; the rest is dropped (kubelet's probes read
/// little, and a guest must not make the daemon buffer without bound).
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;
/// With no timeout from the client, an exec still ends after this long.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

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
            return Err(RuntimeError::InvalidArgument("cmd is empty".into()));
        }
        let container = self.container(id)?;
        let record = container.record();
        if record.state != ContainerState::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        let (_, agent) = self.running_pod(&container)?;
        let mut process: serde_json::Value = serde_json::from_str(&record.process_json)
            .map_err(|e| RuntimeError::Internal(format!("bad stored process: {e}")))?;
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::json!(false);
        let exec_id = new_id()[..16].to_string();
        let cid = container.id.clone();
        let (cid2, eid2) = (cid.clone(), exec_id.clone());
        agent
            .call("exec", SHORT_CALL, |mut c| async move {
                c.exec_process(ExecProcessRequest {
                    container_id: cid2,
                    exec_id: eid2,
                    process_json: process.to_string().into_bytes(),
                    stdin: false,
                })
                .await
            })
            .await?;
        let timeout = if timeout.is_zero() {
            DEFAULT_EXEC_TIMEOUT
        } else {
            timeout
        };
        let (cid2, eid2) = (cid.clone(), exec_id.clone());
        let collect = async {
            let mut out = ExecOutput::default();
            let mut client = agent.raw();
            let stream = client.read_output(ReadOutputRequest {
                container_id: cid2.clone(),
                exec_id: eid2.clone(),
            });
            if let Ok(response) = stream.await {
                let mut stream = response.into_inner();
                while let Ok(Some(chunk)) = stream.message().await {
                    let buffer = match chunk.stream() {
                        OutputStream::Stderr => &mut out.stderr,
                        _ => &mut out.stdout,
                    };
                    let room = MAX_EXEC_OUTPUT.saturating_sub(buffer.len());
                    buffer.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
                }
            }
            let status = agent
                .raw()
                .wait_process(WaitProcessRequest {
                    container_id: cid2,
                    exec_id: eid2,
                })
                .await;
            (out, status)
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok((mut out, Ok(status))) => {
                out.exit_code = status.into_inner().status.map_or(-1, |s| s.exit_code);
                Ok(out)
            }
            Ok((_, Err(status))) => Err(RuntimeError::agent("exec", status)),
            Err(_) => {
                let _ = agent
                    .call("kill exec", SHORT_CALL, |mut c| async move {
                        c.signal_process(SignalProcessRequest {
                            container_id: cid,
                            exec_id,
                            signal: libc::SIGKILL as u32,
                            all: false,
                        })
                        .await
                    })
                    .await;
                Err(RuntimeError::DeadlineExceeded(format!(
                    "command {:?} timed out after {timeout:?}",
                    cmd
                )))
            }
        }
    }
}
