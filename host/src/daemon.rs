//! The daemon's life: open the stores, recover, serve until SIGTERM or
//! SIGINT. Pods' VMMs run in their own process groups and keep running
//! across a daemon restart; the next start reattaches them.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::image::ImageStore;
use crate::runtime::Runtime;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let registry = config.registry.options()?;
    let images = ImageStore::open(&config.image_dir, registry)
        .with_context(|| format!("cannot open the image store {}", config.image_dir.display()))?;
    let socket = config.socket.clone();
    let runtime = Runtime::start(config, Arc::new(images))
        .await
        .context("cannot recover the runtime state")?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping (pods keep running)"),
            _ = int.recv() => tracing::info!("SIGINT: stopping (pods keep running)"),
        }
    };
    crate::server::serve(runtime, &socket, shutdown).await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
