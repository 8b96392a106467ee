//! A started process as the engine tracks it: its exit (watchable by any
//! number of waiters), its stdin and its output, which one reader at a time
//! streams.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use husk_proto::agent::v1 as pb;
use husk_proto::MAX_STDIO_CHUNK;
use tokio::sync::{broadcast, mpsc, watch};

use super::cgroups::Cgroup;
use super::stdio::{AgentStdio, AsyncStream};
use crate::reaper::ExitStatus;

/// The EOF character a terminal's line discipline turns into end of file.
const TERMINAL_EOF: u8 = 0x04;

/// A process of a container: its init or an exec.
pub struct TrackedProcess {
    pub pid: u32,
    exit: watch::Receiver<Option<pb::ExitStatus>>,
    stdin: tokio::sync::Mutex<Option<AsyncStream>>,
    output: Mutex<Option<Output>>,
    pub terminal: Mutex<Option<OwnedFd>>,
    is_terminal: bool,
}

struct Output {
    stdout: Option<AsyncStream>,
    stderr: Option<AsyncStream>,
}

/// Why a stdio operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("the process has no stdin (create it with stdin or a terminal)")]
    NoStdin,
    #[error("the output is already being read by another caller")]
    OutputBusy,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Who to tell about an exit.
pub struct ExitContext {
    pub container_id: String,
    pub exec_id: String,
    pub cgroup: Arc<Cgroup>,
    pub events: broadcast::Sender<pb::Event>,
}

impl TrackedProcess {
    /// Tracks a started process and spawns the task that records its exit.
    pub fn new(
        pid: u32,
        stdio: AgentStdio,
        exit: tokio::sync::oneshot::Receiver<ExitStatus>,
        context: ExitContext,
    ) -> std::io::Result<Arc<Self>> {
        let is_terminal = stdio.terminal.is_some();
        let stream =
            |fd: Option<OwnedFd>| fd.map(|fd| AsyncStream::new(fd, is_terminal)).transpose();
        let process = Arc::new(Self {
            pid,
            exit: watch_exit(pid, exit, context),
            stdin: tokio::sync::Mutex::new(stream(stdio.stdin)?),
            output: Mutex::new(Some(Output {
                stdout: stream(stdio.stdout)?,
                stderr: stream(stdio.stderr)?,
            })),
            terminal: Mutex::new(stdio.terminal),
            is_terminal,
        });
        Ok(process)
    }

    /// The exit status, once there is one.
    pub fn exit_status(&self) -> Option<pb::ExitStatus> {
        self.exit.borrow().clone()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> pb::ExitStatus {
        let mut rx = self.exit.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(status) => status.clone().unwrap_or_default(),
            // The recording task is gone without a status: cannot happen
            // while the reaper runs; report it as an error exit.
            Err(_) => pb::ExitStatus {
                exit_code: 255,
                reason: "Unknown".into(),
                kind: pb::ExitReason::Unknown as i32,
                ..Default::default()
            },
        };
        status
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), StdioError> {
        let stdin = self.stdin.lock().await;
        let stdin = stdin.as_ref().ok_or(StdioError::NoStdin)?;
        Ok(stdin.write_all(data).await?)
    }

    /// Ends stdin: closes the pipe, or sends the EOF character to a
    /// terminal (closing its master would end its output too).
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        let mut stdin = self.stdin.lock().await;
        if self.is_terminal {
            let stdin = stdin.as_ref().ok_or(StdioError::NoStdin)?;
            return Ok(stdin.write_all(&[TERMINAL_EOF]).await?);
        }
        stdin.take().ok_or(StdioError::NoStdin)?;
        Ok(())
    }

    /// Streams stdout and stderr until both end. If the receiver goes away
    /// first, the unread streams are put back for the next reader.
    pub fn read_output(
        self: &Arc<Self>,
    ) -> Result<mpsc::Receiver<Result<pb::OutputChunk, tonic::Status>>, StdioError> {
        let output = self
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(StdioError::OutputBusy)?;
        let (tx, rx) = mpsc::channel(16);
        let process = self.clone();
        tokio::spawn(async move {
            let left = pump(output, &tx).await;
            // Put back what is left (nothing once both streams ended, so a
            // later reader gets an empty stream rather than "busy").
            *process.output.lock().unwrap_or_else(|e| e.into_inner()) = Some(left);
        });
        Ok(rx)
    }
}

/// Forwards chunks until both streams end or the receiver is gone;
/// returns the streams not yet at end of file.
async fn pump(
    mut output: Output,
    tx: &mpsc::Sender<Result<pb::OutputChunk, tonic::Status>>,
) -> Output {
    let mut out_buf = vec![0u8; MAX_STDIO_CHUNK];
    let mut err_buf = vec![0u8; MAX_STDIO_CHUNK];
    loop {
        let (stream, result) = tokio::select! {
            r = read_some(&output.stdout, &mut out_buf) => (pb::OutputStream::Stdout, r),
            r = read_some(&output.stderr, &mut err_buf) => (pb::OutputStream::Stderr, r),
            () = tx.closed() => return output,
        };
        let slot = match stream {
            pb::OutputStream::Stderr => &mut output.stderr,
            _ => &mut output.stdout,
        };
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = tx
                    .send(Err(tonic::Status::internal(format!("reading output: {e}"))))
                    .await;
                *slot = None;
                0
            }
        };
        if n == 0 {
            *slot = None;
            if output.stdout.is_none() && output.stderr.is_none() {
                return output;
            }
            continue;
        }
        let buf = match stream {
            pb::OutputStream::Stderr => &err_buf,
            _ => &out_buf,
        };
        let chunk = pb::OutputChunk {
            stream: stream as i32,
            data: buf[..n].to_vec(),
        };
        if tx.send(Ok(chunk)).await.is_err() {
            return output;
        }
    }
}

/// Reads from a stream, or waits forever if there is none.
async fn read_some(stream: &Option<AsyncStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Turns the reaper's status into the API's, telling OOM kills apart.
fn watch_exit(
    pid: u32,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    context: ExitContext,
) -> watch::Receiver<Option<pb::ExitStatus>> {
    let (tx, rx) = watch::channel(None);
    let oom_before = context.cgroup.oom_kills().unwrap_or(0);
    tokio::spawn(async move {
        let status = exit.await;
        let finished_at_ns = now_ns();
        let status = match status {
            Ok(ExitStatus::Exited(code)) => pb::ExitStatus {
                exit_code: code,
                signal: 0,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                finished_at_ns,
                kind: if code == 0 {
                    pb::ExitReason::Completed
                } else {
                    pb::ExitReason::Error
                } as i32,
            },
            Ok(ExitStatus::Signaled { signal, .. }) => {
                let oom =
                    signal == libc::SIGKILL && context.cgroup.oom_kills().unwrap_or(0) > oom_before;
                if oom {
                    let _ = context.events.send(pb::Event {
                        container_id: context.container_id.clone(),
                        exec_id: context.exec_id.clone(),
                        pid,
                        kind: Some(pb::event::Kind::Oom(pb::OomKill {})),
                    });
                }
                pb::ExitStatus {
                    exit_code: 128 + signal,
                    signal: signal as u32,
                    reason: if oom { "OOMKilled" } else { "Signaled" }.into(),
                    finished_at_ns,
                    kind: if oom {
                        pb::ExitReason::OomKilled
                    } else {
                        pb::ExitReason::Signaled
                    } as i32,
                }
            }
            Err(_) => pb::ExitStatus {
                exit_code: 255,
                signal: 0,
                reason: "Unknown".into(),
                finished_at_ns,
                kind: pb::ExitReason::Unknown as i32,
            },
        };
        let _ = context.events.send(pb::Event {
            container_id: context.container_id,
            exec_id: context.exec_id,
            pid,
            kind: Some(pb::event::Kind::Exit(status.clone())),
        });
        tx.send_replace(Some(status));
    });
    rx
}
