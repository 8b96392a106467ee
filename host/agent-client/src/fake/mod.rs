//! An in-memory husk-agent for the tests of code that uses this client: it
//! serves the real `husk.agent.v1` gRPC API on a unix socket, so callers go
//! through the same client, deadlines and error mapping as in production,
//! but containers and processes are entries in a table that the test
//! scripts (make one exit, write output, fail or hang a call).
//!
//! Processes: a container's init runs from StartContainer until the test
//! ends it or a signal does; an exec runs a tiny command language taken
//! from the process's args: `echo WORDS…` (stdout), `echo-err WORDS…`
//! (stderr), `exit N`, `sleep` (until signalled). Any other command fails
//! with exit code 127. A signal kills with 128 + signal unless the test
//! made the process ignore it (SIGKILL is never ignored). Output is kept
//! until a reader attaches, as the agent's pipes keep it.

mod server;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use husk_proto::agent::v1 as pb;
use husk_proto::agent::v1::agent_server::AgentServer;
use oci_spec::runtime::{LinuxResources, Spec};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;

use crate::{NetworkConfig, OutputStream, SandboxConfig};
pub use server::FakeServer;
use server::FakeService;

/// The fake agent. Cheap to clone: clones share one guest.
#[derive(Clone, Default)]
pub struct FakeAgent {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    guest: Mutex<Guest>,
    shutdown: ShutdownFlag,
    next_pid: AtomicU32,
}

/// Set once Shutdown was called; awaited by whoever plays the VM.
struct ShutdownFlag(watch::Sender<bool>);

impl Default for ShutdownFlag {
    fn default() -> Self {
        ShutdownFlag(watch::channel(false).0)
    }
}

#[derive(Default)]
struct Guest {
    containers: HashMap<String, FakeContainer>,
    sandbox: Option<SandboxConfig>,
    network: Option<NetworkConfig>,
    files: HashMap<String, Vec<u8>>,
    /// Open Events streams.
    subscribers: Vec<mpsc::UnboundedSender<Result<pb::Event, Status>>>,
    /// Statuses the next calls of a name answer, in order.
    failures: HashMap<String, VecDeque<Status>>,
    /// Calls that never answer.
    hung: HashSet<String>,
    /// Every call received, by name, in order.
    calls: Vec<String>,
    api_version: Option<u32>,
}

struct FakeContainer {
    spec: Option<Spec>,
    layers: Vec<String>,
    state: pb::ContainerState,
    created_at_ns: i64,
    started_at_ns: i64,
    resources: Option<LinuxResources>,
    init: FakeProcess,
    execs: HashMap<String, FakeProcess>,
}

type OutputSource =
    Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<pb::OutputChunk, Status>>>>;

struct FakeProcess {
    pid: u32,
    exit: watch::Sender<Option<pb::ExitStatus>>,
    /// Dropped at exit, which ends the output stream once it is drained.
    output: Option<mpsc::UnboundedSender<Result<pb::OutputChunk, Status>>>,
    /// Held by the one reader at a time; free again when it goes away.
    reader: OutputSource,
    ignored: HashSet<u32>,
    stdin: Option<Vec<u8>>,
    terminal_size: Option<(u32, u32)>,
}

impl FakeProcess {
    fn new(pid: u32, stdin: bool) -> Self {
        let (output, reader) = mpsc::unbounded_channel();
        FakeProcess {
            pid,
            exit: watch::channel(None).0,
            output: Some(output),
            reader: Arc::new(tokio::sync::Mutex::new(reader)),
            ignored: HashSet::new(),
            stdin: stdin.then(Vec::new),
            terminal_size: None,
        }
    }

    fn exited(&self) -> Option<pb::ExitStatus> {
        self.exit.borrow().clone()
    }

    fn write(&self, stream: OutputStream, data: &[u8]) {
        let stream = match stream {
            OutputStream::Stdout => pb::OutputStream::Stdout,
            OutputStream::Stderr => pb::OutputStream::Stderr,
        };
        if let Some(output) = &self.output {
            for piece in data.chunks(husk_proto::MAX_STDIO_CHUNK) {
                let _ = output.send(Ok(pb::OutputChunk {
                    stream: stream as i32,
                    data: piece.to_vec(),
                }));
            }
        }
    }

    /// Records the exit (the first one wins) and closes the output.
    fn finish(&mut self, status: pb::ExitStatus) -> bool {
        self.output = None;
        self.exit.send_if_modified(|exit| {
            let first = exit.is_none();
            if first {
                *exit = Some(status);
            }
            first
        })
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn exited_with(code: i32) -> pb::ExitStatus {
    let kind = if code == 0 {
        pb::ExitReason::Completed
    } else {
        pb::ExitReason::Error
    };
    pb::ExitStatus {
        exit_code: code,
        signal: 0,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        finished_at_ns: now_ns(),
        kind: kind as i32,
    }
}

fn killed_by(signal: u32) -> pb::ExitStatus {
    pb::ExitStatus {
        exit_code: 128 + signal as i32,
        signal,
        reason: "Signaled".into(),
        finished_at_ns: now_ns(),
        kind: pb::ExitReason::Signaled as i32,
    }
}

fn oom_killed() -> pb::ExitStatus {
    pb::ExitStatus {
        exit_code: 128 + SIGKILL as i32,
        signal: SIGKILL,
        reason: "OOMKilled".into(),
        finished_at_ns: now_ns(),
        kind: pb::ExitReason::OomKilled as i32,
    }
}

const SIGKILL: u32 = 9;

/// Signals whose default action does not end a process.
fn ends_process(signal: u32) -> bool {
    const HARMLESS: [u32; 4] = [
        17, /* SIGCHLD */
        18, /* SIGCONT */
        23, /* SIGURG */
        28, /* SIGWINCH */
    ];
    signal != 0 && !HARMLESS.contains(&signal)
}

impl FakeAgent {
    pub fn new() -> FakeAgent {
        let agent = FakeAgent::default();
        agent.inner.next_pid.store(1000, Ordering::Relaxed);
        agent
    }

    fn guest(&self) -> MutexGuard<'_, Guest> {
        self.inner.guest.lock().unwrap()
    }

    /// Serves the agent API on a unix socket at `path` until the server is
    /// stopped or dropped. Must be called inside a tokio runtime.
    pub fn serve(&self, path: &Path) -> std::io::Result<FakeServer> {
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let (stop, stopped) = watch::channel(false);
        let service = FakeService::new(self.clone(), stopped.clone());
        let mut until_stopped = stopped;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = until_stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        drop(task);
        Ok(FakeServer::new(path.to_owned(), stop))
    }

    /// Makes Health report `version` as the agent's API revision.
    pub fn set_api_version(&self, version: u32) {
        self.guest().api_version = Some(version);
    }

    /// Resolves once Shutdown was called.
    pub async fn wait_shutdown(&self) {
        let mut flag = self.inner.shutdown.0.subscribe();
        let _ = flag.wait_for(|s| *s).await;
    }

    pub fn shutdown_requested(&self) -> bool {
        *self.inner.shutdown.0.borrow()
    }

    /// The last SetupSandbox request.
    pub fn sandbox(&self) -> Option<SandboxConfig> {
        self.guest().sandbox.clone()
    }

    /// The last SetupNetwork request.
    pub fn network(&self) -> Option<NetworkConfig> {
        self.guest().network.clone()
    }

    /// The spec container `id` was created from.
    pub fn spec(&self, id: &str) -> Option<Spec> {
        self.guest().containers.get(id)?.spec.clone()
    }

    /// The layers container `id` was created over.
    pub fn layers(&self, id: &str) -> Option<Vec<String>> {
        Some(self.guest().containers.get(id)?.layers.clone())
    }

    /// The last resources UpdateContainer applied to `id`.
    pub fn resources(&self, id: &str) -> Option<LinuxResources> {
        self.guest().containers.get(id)?.resources.clone()
    }

    /// What a process's stdin received so far (`None` without a stdin).
    pub fn stdin(&self, id: &str, exec_id: Option<&str>) -> Option<Vec<u8>> {
        let guest = self.guest();
        let container = guest.containers.get(id)?;
        let process = match exec_id {
            None => &container.init,
            Some(exec) => container.execs.get(exec)?,
        };
        process.stdin.clone()
    }

    /// The last window size a terminal process was given.
    pub fn terminal_size(&self, id: &str, exec_id: &str) -> Option<(u32, u32)> {
        self.guest()
            .containers
            .get(id)?
            .execs
            .get(exec_id)?
            .terminal_size
    }

    /// Ids of the containers in the guest.
    pub fn containers(&self) -> Vec<String> {
        self.guest().containers.keys().cloned().collect()
    }

    /// Names of the calls received so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.guest().calls.clone()
    }

    /// Container `id`'s init exits with `code`, announced on Events.
    pub fn exit(&self, id: &str, code: i32) {
        self.end_init(id, exited_with(code), true);
    }

    /// Container `id`'s init exits with `code` while nobody is told (as
    /// when the event stream was broken at the time).
    pub fn exit_silently(&self, id: &str, code: i32) {
        self.end_init(id, exited_with(code), false);
    }

    /// The cgroup OOM killer kills container `id`'s init.
    pub fn oom_kill(&self, id: &str) {
        let pid = match self.guest().containers.get(id) {
            Some(container) => container.init.pid,
            None => return,
        };
        self.publish(pb::Event {
            container_id: id.into(),
            exec_id: String::new(),
            pid,
            kind: Some(pb::event::Kind::Oom(pb::OomKill {})),
        });
        self.end_init(id, oom_killed(), true);
    }

    /// Container `id`'s init prints `data` on `stream`.
    pub fn write_output(&self, id: &str, stream: OutputStream, data: &[u8]) {
        if let Some(container) = self.guest().containers.get(id) {
            container.init.write(stream, data);
        }
    }

    /// Container `id`'s init survives `signal` (not SIGKILL).
    pub fn ignore_signal(&self, id: &str, signal: i32) {
        if let Some(container) = self.guest().containers.get_mut(id) {
            container.init.ignored.insert(signal as u32);
        }
    }

    /// The next call named `call` (e.g. "CreateContainer") answers `status`.
    pub fn fail_next(&self, call: &str, status: Status) {
        let mut guest = self.guest();
        guest
            .failures
            .entry(call.into())
            .or_default()
            .push_back(status);
    }

    /// Every call named `call` from now on never answers.
    pub fn hang(&self, call: &str) {
        self.guest().hung.insert(call.into());
    }

    /// Calls named `call` answer again.
    pub fn unhang(&self, call: &str) {
        self.guest().hung.remove(call);
    }

    /// Container `id` disappears from the guest without a trace or event.
    pub fn forget(&self, id: &str) {
        self.guest().containers.remove(id);
    }

    /// A running container the host never created appears in the guest.
    pub fn add_running(&self, id: &str) {
        let pid = self.next_pid();
        let mut container = FakeContainer::new(None, Vec::new(), pid, false);
        container.state = pb::ContainerState::Running;
        container.started_at_ns = now_ns();
        self.guest().containers.insert(id.into(), container);
    }

    /// Every open Events stream ends, as when the connection breaks.
    pub fn drop_event_streams(&self) {
        self.guest().subscribers.clear();
    }

    fn next_pid(&self) -> u32 {
        self.inner.next_pid.fetch_add(1, Ordering::Relaxed)
    }

    fn publish(&self, event: pb::Event) {
        self.guest()
            .subscribers
            .retain(|subscriber| subscriber.send(Ok(event.clone())).is_ok());
    }

    fn end_init(&self, id: &str, status: pb::ExitStatus, announce: bool) {
        let event = {
            let mut guest = self.guest();
            let Some(container) = guest.containers.get_mut(id) else {
                return;
            };
            if !container.init.finish(status.clone()) {
                return;
            }
            container.state = pb::ContainerState::Stopped;
            pb::Event {
                container_id: id.into(),
                exec_id: String::new(),
                pid: container.init.pid,
                kind: Some(pb::event::Kind::Exit(status)),
            }
        };
        if announce {
            self.publish(event);
        }
    }

    fn end_exec(&self, id: &str, exec_id: &str, status: pb::ExitStatus) {
        let event = {
            let mut guest = self.guest();
            let Some(process) = guest
                .containers
                .get_mut(id)
                .and_then(|c| c.execs.get_mut(exec_id))
            else {
                return;
            };
            if !process.finish(status.clone()) {
                return;
            }
            pb::Event {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid: process.pid,
                kind: Some(pb::event::Kind::Exit(status)),
            }
        };
        self.publish(event);
    }

    /// Delivers `signal` to one process; answers whether it died.
    fn deliver(&self, id: &str, exec_id: Option<&str>, signal: u32) -> Result<(), Status> {
        let dies = {
            let guest = self.guest();
            let container = guest.containers.get(id).ok_or_else(|| no_container(id))?;
            let process = match exec_id {
                None => &container.init,
                Some(exec) => container.execs.get(exec).ok_or_else(|| no_exec(id, exec))?,
            };
            if process.exited().is_some() {
                return Err(Status::failed_precondition(format!(
                    "container {id:?} process has already exited"
                )));
            }
            ends_process(signal) && (signal == SIGKILL || !process.ignored.contains(&signal))
        };
        if dies {
            match exec_id {
                None => self.end_init(id, killed_by(signal), true),
                Some(exec) => self.end_exec(id, exec, killed_by(signal)),
            }
        }
        Ok(())
    }

    /// Every process of container `id` gets `signal`.
    fn deliver_all(&self, id: &str, signal: u32) -> Result<(), Status> {
        let execs: Vec<String> = {
            let guest = self.guest();
            let container = guest.containers.get(id).ok_or_else(|| no_container(id))?;
            container.execs.keys().cloned().collect()
        };
        for exec in execs {
            let _ = self.deliver(id, Some(&exec), signal);
        }
        let _ = self.deliver(id, None, signal);
        Ok(())
    }

    /// Runs the command language of an exec'd process.
    fn run_exec(&self, id: &str, exec_id: &str, args: &[String]) {
        let words = args.get(1..).unwrap_or_default().join(" ");
        let (stream, text, code) = match args.first().map(String::as_str) {
            Some("echo") => (OutputStream::Stdout, format!("{words}\n"), Some(0)),
            Some("echo-err") => (OutputStream::Stderr, format!("{words}\n"), Some(0)),
            Some("exit") => (
                OutputStream::Stdout,
                String::new(),
                Some(words.trim().parse().unwrap_or(1)),
            ),
            Some("sleep") => (OutputStream::Stdout, String::new(), None),
            other => (
                OutputStream::Stderr,
                format!("fake agent: {other:?}: command not found\n"),
                Some(127),
            ),
        };
        if !text.is_empty() {
            if let Some(process) = self
                .guest()
                .containers
                .get(id)
                .and_then(|c| c.execs.get(exec_id))
            {
                process.write(stream, text.as_bytes());
            }
        }
        if let Some(code) = code {
            self.end_exec(id, exec_id, exited_with(code));
        }
    }
}

impl FakeContainer {
    fn new(spec: Option<Spec>, layers: Vec<String>, pid: u32, stdin: bool) -> Self {
        FakeContainer {
            spec,
            layers,
            state: pb::ContainerState::Created,
            created_at_ns: now_ns(),
            started_at_ns: 0,
            resources: None,
            init: FakeProcess::new(pid, stdin),
            execs: HashMap::new(),
        }
    }

    fn status(&self, id: &str) -> pb::ContainerStatus {
        pb::ContainerStatus {
            container_id: id.into(),
            state: self.state as i32,
            pid: self.init.pid,
            created_at_ns: self.created_at_ns,
            started_at_ns: self.started_at_ns,
            exit: self.init.exited(),
            exec_ids: self.execs.keys().cloned().collect(),
            annotations: self
                .spec
                .as_ref()
                .and_then(|s| s.annotations().clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }
}

fn no_container(id: &str) -> Status {
    Status::not_found(format!("no container {id:?}"))
}

fn no_exec(id: &str, exec: &str) -> Status {
    Status::not_found(format!("container {id:?} has no process {exec:?}"))
}
