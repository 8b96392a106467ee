//! `cargo xtask guest`: the guest kernel and the agent's initramfs.

use std::path::PathBuf;

use crate::static_bin::{self, Profile};
use crate::{initramfs, kernel};

/// The two files a VMM needs to boot a husk guest.
pub struct GuestImage {
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds (or reuses) the kernel and the initramfs.
pub fn build() -> anyhow::Result<GuestImage> {
    let vmlinux = kernel::build()?;
    let agent = static_bin::build("husk-agent", "husk-agent", Profile::Guest)?;
    let initramfs = initramfs::build(&agent)?;
    Ok(GuestImage { vmlinux, initramfs })
}
