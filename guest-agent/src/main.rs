//! husk-agent: PID 1 of every husk microVM. Prepares the guest, serves the
//! agent API (`proto/agent.proto`) over vsock, and powers the VM off when
//! the host asks. Runs as an ordinary process too (`--listen unix:PATH`), so
//! tests exercise it without a VM.

mod cli;
mod engine;
mod files;
mod listener;
mod metrics;
mod mountinfo;
mod network;
mod pid1;
mod reaper;
mod sandbox;
mod sandbox_namespaces;
mod server;
mod service;

use std::convert::Infallible;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use std::sync::Arc;

use crate::cli::Cli;
use crate::engine::{Engine, EngineConfig};
use crate::reaper::Reaper;
use crate::sandbox::Sandbox;
use crate::service::{AgentService, AGENT_VERSION};

/// Everything that can stop the agent.
#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error(transparent)]
    Setup(#[from] pid1::SetupError),
    #[error("{0}")]
    Args(clap::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] nix::Error),
    #[error(transparent)]
    Reaper(#[from] reaper::ReaperError),
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    #[error("cannot watch for SIGTERM/SIGINT: {0}")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error(transparent)]
    Power(#[from] pid1::PowerError),
}

fn main() -> ExitCode {
    let started = Instant::now();
    // A container init is this binary again; it is pid 1 of its own pid
    // namespace, so this check must come before `is_pid1`.
    if std::env::args_os().nth(1).as_deref() == Some(engine::init::protocol::INIT_ARG.as_ref()) {
        engine::init::main();
    }
    if pid1::is_pid1() {
        // PID 1 must never return: report and reset instead, even on panic
        // (the default hook has already printed the panic message).
        let err = match std::panic::catch_unwind(|| run_as_init(started)) {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(never)) => match never {},
            Err(_) => "panicked".to_owned(),
        };
        pid1::fatal(err);
    }
    // Bad arguments: clap prints an error naming the flag and exits 2.
    let cli = Cli::parse();
    match run(cli, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The guest's init: prepare the system, serve, then power off.
fn run_as_init(started: Instant) -> Result<Infallible, AgentError> {
    pid1::setup()?;
    let cli = Cli::try_parse().map_err(AgentError::Args)?;
    runtime()?.block_on(async {
        serve_until_stopped(cli, started, true).await?;
        match pid1::power_off().await {
            Ok(never) => match never {},
            Err(e) => Err(e.into()),
        }
    })
}

/// An ordinary process: serve until Shutdown or SIGTERM/SIGINT, then exit.
fn run(cli: Cli, started: Instant) -> Result<(), AgentError> {
    // Orphans of our descendants come to us, as they would to PID 1.
    nix::sys::prctl::set_child_subreaper(true).map_err(AgentError::Subreaper)?;
    // Before any thread exists: unshare needs a single-threaded process.
    sandbox_namespaces::enter_private();
    runtime()?.block_on(serve_until_stopped(cli, started, false))
}

fn runtime() -> Result<tokio::runtime::Runtime, AgentError> {
    // Two workers: enough for a control plane, small in a 128 MiB guest.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)
}

async fn serve_until_stopped(cli: Cli, started: Instant, pid1: bool) -> Result<(), AgentError> {
    // Before anything can spawn a child.
    let reaper = Reaper::start()?;
    let (stop, stop_rx) = watch::channel(false);
    if !pid1 {
        // The kernel never delivers these to PID 1 unless it asks; outside
        // a VM they are how a supervisor stops us.
        watch_stop_signals(stop.clone())?;
    }
    let listener = listener::bind(&cli.listen)?;
    let sandbox = Sandbox::new(&cli.root);
    let engine = Engine::new(
        reaper,
        EngineConfig {
            root: cli.root.clone(),
            layer_root: cli.shared_root.clone(),
            allowed_mount_roots: vec![cli.shared_root.clone(), sandbox.dir().to_path_buf()],
        },
    );
    let engine = Arc::new(engine);
    let service = AgentService::new(
        started,
        stop,
        files::SharedFolder::new(cli.shared_root),
        engine.clone(),
        sandbox,
    );
    announce_ready();
    server::serve(listener, service, stop_rx).await?;
    engine.shutdown().await;
    Ok(())
}

/// Raises the stop flag on SIGTERM or SIGINT.
fn watch_stop_signals(stop: watch::Sender<bool>) -> Result<(), AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stop.send_replace(true);
    });
    Ok(())
}

/// The host measures boot time to this exact line, printed once the socket
/// accepts connections.
fn announce_ready() {
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "husk-agent ready {AGENT_VERSION}").and_then(|()| out.flush()) {
        // Keep serving: the host can still reach us, it just can't time us.
        eprintln!("husk-agent: cannot write the ready line: {e}");
    }
}
