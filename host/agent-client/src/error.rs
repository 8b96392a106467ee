//! What can go wrong talking to an agent. Every variant names the call and
//! the address, so a message in a daemon log says which pod's agent failed
//! at what.

use std::time::Duration;

use crate::AgentAddr;

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error(
        "cannot connect to the agent at {addr} within {deadline:?} \
         ({attempts} attempts; last: {last_error})"
    )]
    Connect {
        addr: AgentAddr,
        deadline: Duration,
        attempts: u32,
        last_error: String,
    },
    /// The agent answered Health with an API revision we cannot use.
    #[error(
        "the agent at {addr} speaks agent API {api_version} (husk-agent {agent_version}); \
         this host needs at least {min}"
    )]
    Incompatible {
        addr: AgentAddr,
        agent_version: String,
        api_version: u32,
        min: u32,
    },
    #[error("agent call {call} to {addr} timed out after {timeout:?}")]
    Timeout {
        call: &'static str,
        addr: AgentAddr,
        timeout: Duration,
    },
    #[error("agent call {call} to {addr}: {what} of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        call: &'static str,
        addr: AgentAddr,
        what: &'static str,
        len: usize,
        limit: usize,
    },
    /// A request the client refuses to send (it would be refused anyway).
    #[error("agent call {call}: {reason}")]
    Invalid { call: &'static str, reason: String },
    #[error("agent call {call}: cannot encode {what}: {source}")]
    Encode {
        call: &'static str,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    // The status is in the message, not a `#[source]`: an error-chain
    // printer (anyhow's `{:#}`) would print it twice.
    #[error("agent call {call} to {addr} failed: {status}")]
    Call {
        call: &'static str,
        addr: AgentAddr,
        status: tonic::Status,
    },
}

impl AgentClientError {
    /// The gRPC code the agent answered with, when it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            AgentClientError::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The agent does not know the container or process.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }

    /// The agent refused because of the target's state (e.g. signalling a
    /// process that has exited).
    pub fn is_failed_precondition(&self) -> bool {
        self.code() == Some(tonic::Code::FailedPrecondition)
    }

    /// The call ran out of time (ours or the agent's).
    pub fn is_timeout(&self) -> bool {
        matches!(self, AgentClientError::Timeout { .. })
            || self.code() == Some(tonic::Code::DeadlineExceeded)
    }

    /// What the agent said, without our context (for messages that add
    /// their own).
    pub fn agent_message(&self) -> Option<&str> {
        match self {
            AgentClientError::Call { status, .. } => Some(status.message()),
            _ => None,
        }
    }
}
