//! Runs the gRPC server on a bound listener until the stop flag is raised.

use std::time::Duration;

use husk_proto::agent::v1::agent_server::AgentServer;
use husk_proto::MAX_MESSAGE_SIZE;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::listener::Listener;
use crate::service::AgentService;

/// After the stop flag, how long in-flight calls get to finish (and their
/// answers to be written) before we stop waiting for them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `service` on `listener` until `stop` becomes true, then drains.
pub async fn serve(
    listener: Listener,
    service: AgentService,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let service = AgentServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let router = Server::builder().add_service(service);
    let stop_signal = stopped(stop.clone());
    let socket_file = match &listener {
        Listener::Unix { path, .. } => Some(path.clone()),
        Listener::Vsock(_) => None,
    };

    let served = async {
        match listener {
            Listener::Vsock(listener) => {
                router
                    .serve_with_incoming_shutdown(listener.incoming(), stop_signal)
                    .await
            }
            Listener::Unix { listener, .. } => {
                router
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop_signal)
                    .await
            }
        }
    };
    // A client that keeps its connection open must not hold the shutdown
    // hostage: bound the drain.
    let drain_deadline = async {
        stopped(stop).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        result = served => result,
        () = drain_deadline => {
            eprintln!("husk-agent: connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    };
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(result?)
}

/// Resolves once the flag is true (or every sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
