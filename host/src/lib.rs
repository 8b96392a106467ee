//! husk: a Kubernetes CRI runtime that runs every pod in its own KVM
//! microVM.
//!
//! Rooms of the daemon, outside in:
//! - [`server`]: the CRI gRPC services; translation only.
//! - [`runtime`]: the pod and container state machine (what exists, which
//!   state, the calls that change it) and its recovery after a restart.
//! - [`state`]: the records on disk, replaced atomically.
//! - [`vm`]: one pod's microVM behind a seam ([`vm::VmController`]): the
//!   husk-vmm process, its folder and the mounts it shares with the guest.
//! - [`image`]: the node's image store (pull, content-addressed blobs,
//!   layers unpacked once and shared by every pod).
//! - [`spec`]: CRI container config → OCI runtime spec for the agent.
//! - [`logs`]: container output → CRI log files.
//! - [`config`]: the TOML configuration file.
//! - [`deadlines`]: every wait and deadline, named once.

pub mod config;
pub mod daemon;
pub mod deadlines;
pub mod image;
pub mod logs;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod state;
pub mod vm;
