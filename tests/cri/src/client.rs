//! A CRI client on a unix socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Longest a CRI call may take (RunPodSandbox in the nested rig takes
/// seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the daemon's socket, retrying until `deadline`.
    pub async fn connect(socket: &Path, deadline: Duration) -> anyhow::Result<Cri> {
        let until = Instant::now() + deadline;
        loop {
            match Self::connect_once(socket).await {
                Ok(cri) => return Ok(cri),
                Err(error) if Instant::now() >= until => {
                    anyhow::bail!(
                        "cannot connect to the CRI socket {}: {error}",
                        socket.display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn connect_once(socket: &Path) -> anyhow::Result<Cri> {
        let path: PathBuf = socket.to_owned();
        // Every unary call is bounded: a daemon that hangs fails the test
        // instead of stalling it.
        let channel = Endpoint::try_from("http://[::]:50051")?
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        let mut runtime = RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        runtime
            .version(k8s_cri::v1::VersionRequest::default())
            .await?;
        Ok(Cri {
            runtime,
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        })
    }
}
