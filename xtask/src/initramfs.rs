//! Packs the guest initramfs: husk-agent as /init.

use std::path::{Path, PathBuf};

/// Packs (or reuses from the cache) the initramfs around `agent`.
pub fn build(agent: &Path) -> anyhow::Result<PathBuf> {
    let _ = agent;
    anyhow::bail!("initramfs not implemented yet")
}
