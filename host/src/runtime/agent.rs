//! The daemon's handle on one pod's agent: the generated client with a
//! deadline on every call (a wedged guest must never hang a CRI call).

use std::time::Duration;

use husk_agent_client::AgentClient;
use husk_proto::agent::v1::agent_client::AgentClient as RawClient;
use tonic::transport::Channel;
use tonic::Status;

use super::error::{Result, RuntimeError};

/// Calls that answer at once (state, stats, signals, create/start).
pub const SHORT_CALL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct PodAgent {
    client: RawClient<Channel>,
}

impl PodAgent {
    pub fn new(client: &AgentClient) -> PodAgent {
        PodAgent {
            client: client.raw(),
        }
    }

    /// A fresh handle on the generated client (cheap: one shared channel).
    pub fn raw(&self) -> RawClient<Channel> {
        self.client.clone()
    }

    /// Runs one call with a deadline; `what` names it in errors.
    pub async fn call<T, F, Fut>(&self, what: &str, deadline: Duration, call: F) -> Result<T>
    where
        F: FnOnce(RawClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(deadline, call(self.raw())).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(RuntimeError::agent(what, status)),
            Err(_) => Err(RuntimeError::DeadlineExceeded(format!(
                "{what}: the pod's agent did not answer within {deadline:?}"
            ))),
        }
    }
}
