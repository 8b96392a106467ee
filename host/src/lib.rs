//! husk: a Kubernetes CRI runtime that runs every pod in its own KVM
//! microVM. At this stage the library holds the client of the guest agent.

pub mod agent_client;
