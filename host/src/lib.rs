//! husk: a Kubernetes CRI runtime that runs every pod in its own KVM
//! microVM.
//!
//! Rooms of the daemon:
//! - [`config`]: the TOML configuration file.
//! - [`image`]: the node's image store (pull, content-addressed blobs,
//!   layers unpacked once and shared by every pod).
//! - [`spec`]: CRI container config → OCI runtime spec for the agent.
//! - [`logs`]: container output → CRI log files.

pub mod config;
pub mod image;
pub mod logs;
pub mod spec;
