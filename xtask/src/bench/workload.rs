//! What `cargo xtask bench agent` runs under both runtimes, so husk-agent
//! and runc are timed on the same containers: the same busybox layer, the
//! same commands, the same container ids.

/// The image layer's folder name under the agent's shared root (runc's
/// bundles copy the same folder).
pub(super) const LAYER: &str = "busybox";

/// What the create/start figures run: it exits at once.
pub(super) const TRUE_ARGS: &[&str] = &["/bin/true"];

/// The long-running container the exec figures run in.
pub(super) const SLEEPER: &str = "sleeper";

/// What [`SLEEPER`] runs, outlasting any benchmark.
pub(super) const SLEEPER_ARGS: &[&str] = &["/bin/sleep", "3600"];

/// What each exec runs in [`SLEEPER`].
pub(super) const EXEC_ARGS: &[&str] = &["/bin/true"];
