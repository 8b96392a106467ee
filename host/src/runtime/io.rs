//! Container output → CRI log file. The agent keeps a container's output
//! in its pipes until a reader attaches, so the pump starts at
//! CreateContainer (and again after a daemon restart) and runs until the
//! stream ends.

use std::path::Path;
use std::sync::Arc;

use husk_proto::agent::v1::{OutputStream, ReadOutputRequest};

use super::agent::{PodAgent, SHORT_CALL};
use super::error::{Result, RuntimeError};
use super::Container;
use crate::logs::{LogWriter, Stream};

/// Opens the container's log file (before the container exists, so a bad
/// path fails CreateContainer cleanly).
pub fn open_log(path: Option<&Path>) -> Result<Option<LogWriter>> {
    path.map(|path| {
        LogWriter::open(path).map_err(|e| {
            RuntimeError::InvalidArgument(format!(
                "cannot open the container log file {}: {e}",
                path.display()
            ))
        })
    })
    .transpose()
}

/// Copies the container's output into `writer` until the stream ends.
pub fn start_pump(container: &Arc<Container>, agent: PodAgent, writer: Option<LogWriter>) {
    *container.log.lock().unwrap() = writer;
    let log = container.log.clone();
    let id = container.id.clone();
    let task = tokio::spawn(async move {
        let request = ReadOutputRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        };
        let mut client = agent.raw();
        let stream = tokio::time::timeout(SHORT_CALL, client.read_output(request)).await;
        let mut stream = match stream {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(container = %id, %status, "cannot read the container's output");
                return;
            }
            Err(_) => {
                tracing::warn!(container = %id, "the agent did not open the container's output");
                return;
            }
        };
        while let Ok(Some(chunk)) = stream.message().await {
            let stream = match chunk.stream() {
                OutputStream::Stderr => Stream::Stderr,
                _ => Stream::Stdout,
            };
            if let Some(writer) = log.lock().unwrap().as_mut() {
                if let Err(error) = writer.write(stream, &chunk.data) {
                    tracing::warn!(container = %id, %error, "cannot write the container log");
                }
            }
        }
        if let Some(writer) = log.lock().unwrap().as_mut() {
            let _ = writer.finish();
        }
    });
    *container.pump.lock().unwrap() = Some(task);
}

/// Stops copying (the container is being removed).
pub fn stop_pump(container: &Container) {
    if let Some(task) = container.pump.lock().unwrap().take() {
        task.abort();
    }
    if let Some(mut writer) = container.log.lock().unwrap().take() {
        let _ = writer.finish();
    }
}
