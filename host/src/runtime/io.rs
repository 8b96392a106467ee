//! Container output → CRI log file. The agent keeps a container's output
//! in its pipes until a reader attaches, so the pump starts at
//! CreateContainer (and again after a daemon restart) and runs until the
//! stream ends.

use std::path::Path;
use std::sync::Arc;

use husk_agent_client::{AgentClient, OutputStream, ProcessRef};

use super::error::{Result, RuntimeError};
use super::Container;
use crate::logs::{LogWriter, Stream};

/// Opens the container's log file (before the container exists, so a bad
/// path fails CreateContainer cleanly).
pub fn open_log(path: Option<&Path>) -> Result<Option<LogWriter>> {
    path.map(|path| {
        LogWriter::open(path).map_err(|source| RuntimeError::LogFile {
            path: path.to_owned(),
            source,
        })
    })
    .transpose()
}

/// Copies the container's output into `writer` until the stream ends.
pub fn start_pump(container: &Arc<Container>, agent: AgentClient, writer: Option<LogWriter>) {
    *container.log.lock().unwrap() = writer;
    let log = container.log.clone();
    let id = container.id.clone();
    let task = tokio::spawn(async move {
        let mut output = match agent.read_output(&ProcessRef::init(&id)).await {
            Ok(output) => output,
            Err(error) => {
                tracing::warn!(container = %id, %error, "cannot read the container's output");
                return;
            }
        };
        while let Ok(Some(chunk)) = output.next().await {
            let stream = match chunk.stream {
                OutputStream::Stderr => Stream::Stderr,
                OutputStream::Stdout => Stream::Stdout,
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
