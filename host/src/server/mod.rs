//! The CRI gRPC server (runtime.v1) on a unix socket: translation between
//! CRI messages and the [`Runtime`]/[`ImageStore`] calls, nothing more.

pub(crate) mod convert;
mod filters;
mod image_service;
mod runtime_service;
pub mod status;

use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::runtime::Runtime;

pub use image_service::ImageService;
pub use runtime_service::RuntimeService;

use crate::deadlines::SERVER_SHUTDOWN_GRACE as SHUTDOWN_GRACE;

/// kubelet's own limit for CRI messages.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the CRI server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves the CRI on `socket` until `shutdown` completes.
pub async fn serve(
    runtime: Arc<Runtime>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let listen_err = |source| ServerError::Listen {
        path: socket.to_owned(),
        source,
    };
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(listen_err)?;
    }
    // A socket left by a previous run (kill -9) would make bind fail.
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(listen_err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(listen_err)?;
    tracing::info!(socket = %socket.display(), "serving the CRI");
    let runtime_service = RuntimeServiceServer::new(RuntimeService::new(runtime.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let image_service = ImageServiceServer::new(ImageService::new(runtime))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Graceful stop waits for open calls, and GetContainerEvents streams
    // never end: after the grace period the daemon exits anyway (pods keep
    // running; clients reconnect to the next daemon).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(runtime_service)
        .add_service(image_service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = shutdown => {
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    "calls still open {SHUTDOWN_GRACE:?} after the stop signal (event streams): exiting anyway"
                ),
            }
        }
    }
    Ok(())
}
