//! SetupNetwork: links, addresses and routes of the agent's own network
//! namespace, which is the sandbox's and so every container's (the
//! guest's in a VM; a private one outside a VM, see main).
//!
//! The request is checked in full and every link it names is looked up
//! before the first change, so a bad request or a missing link changes
//! nothing. A netlink failure after that stops the call where it failed.

mod netlink;
mod plan;

use std::io;

use husk_proto::agent::v1::SetupNetworkRequest;
use tokio::sync::Mutex;
use tonic::Status;

use self::plan::Plan;

/// Why SetupNetwork failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: there is no link named {name:?} in the sandbox's network namespace")]
    NoSuchLink { field: String, name: String },
    #[error("{operation}: {source}")]
    Netlink {
        operation: String,
        #[source]
        source: io::Error,
    },
}

impl From<NetworkError> for Status {
    fn from(e: NetworkError) -> Status {
        match e {
            NetworkError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            NetworkError::NoSuchLink { .. } => Status::not_found(e.to_string()),
            NetworkError::Netlink { .. } => Status::internal(e.to_string()),
        }
    }
}

/// Two calls at once would interleave their deletes and adds on a link.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Applies `request` to the agent's network namespace.
pub async fn setup(request: &SetupNetworkRequest) -> Result<(), NetworkError> {
    let plan = Plan::new(request)?;
    let _guard = ONE_AT_A_TIME.lock().await;
    netlink::apply(&plan).await
}

#[cfg(test)]
mod tests;
