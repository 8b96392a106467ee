//! Extracting an ELF `vmlinux` from Debian's compressed `vmlinuz`.
//!
//! QEMU boots an ELF kernel through PVH, which is faster to set up than a
//! bzImage and needs no firmware. Debian's cloud kernel compresses its
//! payload with LZ4 (legacy frame format, which no maintained Rust crate
//! reads), so we locate the frame by its magic and hand it to the `lz4` tool.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// Magic of an LZ4 legacy frame, as the kernel's build writes it.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Offsets of every candidate LZ4 legacy frame in `image`.
pub fn lz4_frame_offsets(image: &[u8]) -> Vec<usize> {
    image
        .windows(LZ4_LEGACY_MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == LZ4_LEGACY_MAGIC)
        .map(|(i, _)| i)
        .collect()
}

/// Writes the ELF kernel found inside `vmlinuz` to `out`.
pub fn extract(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
    let image = std::fs::read(vmlinuz).with_context(|| format!("cannot read {vmlinuz:?}"))?;
    for offset in lz4_frame_offsets(&image) {
        let frame = out.with_extension("lz4");
        std::fs::write(&frame, &image[offset..])?;
        // lz4 stops with an error at the trailing non-LZ4 bytes after the
        // frame; the decompressed output is what matters, checked below.
        let _ = Command::new("lz4")
            .args(["-d", "-f", "-q"])
            .arg(&frame)
            .arg(out)
            .status()
            .context("cannot run lz4 (Debian package lz4)")?;
        let _ = std::fs::remove_file(&frame);
        let head = std::fs::read(out).map(|b| b.get(..4).map(<[u8]>::to_vec));
        if let Ok(Some(head)) = head {
            if head == ELF_MAGIC {
                return Ok(());
            }
        }
    }
    bail!("no LZ4-compressed ELF kernel found in {vmlinuz:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_lz4_magic() {
        let mut image = vec![0u8; 64];
        image[10..14].copy_from_slice(&LZ4_LEGACY_MAGIC);
        image[40..44].copy_from_slice(&LZ4_LEGACY_MAGIC);
        assert_eq!(lz4_frame_offsets(&image), vec![10, 40]);
        assert!(lz4_frame_offsets(&[0x02, 0x21, 0x4c]).is_empty());
    }
}
