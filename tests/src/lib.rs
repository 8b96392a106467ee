//! Test infrastructure shared by `cargo xtask` and the integration tests.
//!
//! - [`artifacts`]: the build outputs rig runs need, and their paths.
//! - [`busybox`]: a busybox image layer and a `runc spec`-like OCI spec, the
//!   smallest real container for the agent's and runc's container tests.
//! - [`cache`]: the content-keyed build cache outside the clone.
//! - [`critest`]: critest's per-spec results against the expected-failure list.
//! - [`critest_images`]: every image critest pulls, built from Debian packages
//!   into a registry storage kept in the cache.
//! - [`debian`]: installs and fetches the Debian packages the project needs.
//! - [`guest_memory`]: the guest's share of a VMM's RSS, for overhead figures.
//! - [`stats`]: medians and percentiles for benchmark lines.
//! - [`rig`]: runs a command in the nested KVM test host (or natively where
//!   the host's KVM can boot Linux).

pub mod artifacts;
pub mod busybox;
pub mod cache;
pub mod critest;
pub mod critest_images;
pub mod debian;
pub mod guest_memory;
pub mod registry;
pub mod rig;
pub mod stats;
