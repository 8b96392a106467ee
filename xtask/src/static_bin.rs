//! Statically linked release builds of workspace binaries (the guest agent
//! and the programs that run inside the rig's L1 host).
//!
//! glibc with `crt-static`: no dynamic loader exists in the guest initramfs,
//! so the binary must not ask for one.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::cmd;

/// The target triple we build for. Naming it explicitly also keeps
/// RUSTFLAGS away from build scripts and proc-macros, which must stay
/// ordinary dynamic host programs.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Which cargo profile a binary is built with.
#[derive(Debug, Clone, Copy)]
pub enum Profile {
    /// `release`: the VMM and the programs that run in the rig.
    Release,
    /// `guest`: release built for size, for what ships in the guest image,
    /// where every byte is guest RAM and boot time.
    Guest,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Guest => "guest",
        }
    }
}

/// Builds `bin` of `package` statically linked and returns its path.
pub fn build(package: &str, bin: &str, profile: Profile) -> anyhow::Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd::run(
        Command::new(&cargo)
            .args(["build", "--profile", profile.name(), "--target", TARGET])
            .args(["-p", package, "--bin", bin])
            .env("RUSTFLAGS", rustflags())
            // Would take precedence over RUSTFLAGS if inherited.
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )?;
    let path = target_dir()?.join(TARGET).join(profile.name()).join(bin);
    ensure_static(&path)?;
    Ok(path)
}

/// `-C target-feature=+crt-static`, after any RUSTFLAGS the caller set.
fn rustflags() -> OsString {
    let mut flags = env::var_os("RUSTFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push(" ");
    }
    flags.push("-C target-feature=+crt-static");
    flags
}

/// The workspace's target directory as cargo resolves it (honours
/// `CARGO_TARGET_DIR` and `build.target-dir`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata =
        cmd::output(Command::new(&cargo).args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("`cargo metadata` printed no JSON")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` printed no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Fails unless `path` is an x86-64 ELF executable without a program
/// interpreter (PT_INTERP), i.e. one the kernel runs with no dynamic loader.
pub fn ensure_static(path: &Path) -> anyhow::Result<()> {
    let elf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match has_interpreter(&elf) {
        Ok(false) => Ok(()),
        Ok(true) => bail!(
            "{} is dynamically linked (it has a PT_INTERP program header); \
             the guest has no dynamic loader. Is RUSTFLAGS with +crt-static being overridden?",
            path.display()
        ),
        Err(e) => Err(e.context(format!("{} is not a usable ELF executable", path.display()))),
    }
}

/// Whether an ELF64 little-endian x86-64 image asks for a program
/// interpreter. Parsed by hand: a few fixed header offsets, not worth a crate.
fn has_interpreter(elf: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        let b = elf.get(at..at + 2).context("truncated ELF header")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        let b = elf.get(at..at + 4).context("truncated program header")?;
        Ok(u32::from_le_bytes(b.try_into()?))
    };
    let u64_at = |at: usize| -> anyhow::Result<u64> {
        let b = elf.get(at..at + 8).context("truncated ELF header")?;
        Ok(u64::from_le_bytes(b.try_into()?))
    };

    ensure!(elf.starts_with(b"\x7fELF"), "no ELF magic");
    ensure!(elf.get(4) == Some(&2), "not a 64-bit ELF");
    ensure!(elf.get(5) == Some(&1), "not little-endian");
    ensure!(u16_at(18)? == EM_X86_64, "not an x86-64 ELF");

    let phoff = usize::try_from(u64_at(32)?)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    ensure!(phentsize >= 4, "bad program header size {phentsize}");
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 header followed by program headers of `types`.
    fn elf_with(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELFCLASS64
        elf[5] = 1; // little-endian
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            elf.extend(ph);
        }
        elf
    }

    #[test]
    fn finds_the_interpreter_header() {
        const PT_LOAD: u32 = 1;
        const PT_DYNAMIC: u32 = 2;
        // static-pie keeps PT_DYNAMIC (for self-relocation) but no PT_INTERP.
        assert!(!has_interpreter(&elf_with(&[PT_LOAD, PT_DYNAMIC])).unwrap());
        assert!(has_interpreter(&elf_with(&[PT_LOAD, 3, PT_DYNAMIC])).unwrap());
    }

    #[test]
    fn rejects_what_is_not_x86_64_elf() {
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        let mut elf = elf_with(&[1]);
        elf[18] = 183; // aarch64
        assert!(has_interpreter(&elf).is_err());
        let mut truncated = elf_with(&[1, 1]);
        truncated.truncate(64 + 56 + 2);
        assert!(has_interpreter(&truncated).is_err());
    }

    #[test]
    fn a_dynamic_system_binary_is_refused() {
        // Debian's coreutils are dynamically linked.
        let err = ensure_static(Path::new("/bin/ls")).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
    }
}
