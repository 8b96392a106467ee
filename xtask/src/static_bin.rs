//! Statically linked release builds of workspace binaries (the guest agent
//! and the programs that run inside the rig's L1 host).

use std::path::PathBuf;

/// Builds `bin` of `package` statically linked and returns its path.
pub fn build(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let _ = (package, bin);
    anyhow::bail!("static build not implemented yet")
}
