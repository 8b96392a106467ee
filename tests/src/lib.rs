//! Test infrastructure shared by `cargo xtask` and the integration tests.
//!
//! - [`debian`]: installs and fetches the Debian packages the project needs.
//! - [`rig`]: runs a command in the nested KVM test host (or natively where
//!   the host's KVM can boot Linux).

pub mod debian;

use std::path::PathBuf;

/// Root of husk's cache, outside any clone: `$HUSK_CACHE_DIR`, else
/// `$HOME/.cache/husk`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUSK_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("husk")
}
