//! Builds our guest kernel (`kernel-config/`) into an ELF vmlinux.

use std::path::PathBuf;

/// Builds (or reuses from the cache) vmlinux and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    anyhow::bail!("kernel build not implemented yet")
}
