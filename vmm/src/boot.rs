//! Putting the guest's software into its memory: the ELF vmlinux through
//! linux-loader, the initramfs at the top of low memory, the command line,
//! the zero page and the MP table.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::arch::boot_params::{self, Initrd};
use crate::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};
use crate::arch::mptable;
use husk_virtio::GuestMemory as Memory;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path} is not an ELF vmlinux (uncompressed, x86_64): {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "cannot load kernel {path} into guest memory: {source} (is --memory-mib large enough?)"
    )]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel; raise --memory-mib")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write the zero page: {0}")]
    BootParams(#[from] boot_params::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
}

/// Where the kernel starts and where its image ends.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub end: u64,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Loads the ELF vmlinux at `path`. The segments go straight from the file
/// into guest memory (no copy in our heap).
pub fn load_kernel(mem: &Memory, path: &Path) -> Result<LoadedKernel, Error> {
    let mut file = File::open(path).map_err(|source| Error::OpenKernel {
        path: path.into(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let not_elf = |reason: String| Error::NotElf {
        path: path.into(),
        reason,
    };
    file.read_exact(&mut magic)
        .map_err(|e| not_elf(format!("cannot read its header: {e}")))?;
    if &magic != ELF_MAGIC {
        return Err(not_elf(format!(
            "it starts with {magic:02x?}, not \\x7fELF (a bzImage will not do)"
        )));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|source| Error::OpenKernel {
            path: path.into(),
            source,
        })?;
    let loaded =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            match source {
                linux_loader::loader::Error::Elf(e) => not_elf(e.to_string()),
                source => Error::LoadKernel {
                    path: path.into(),
                    source,
                },
            }
        })?;
    Ok(LoadedKernel {
        entry: loaded.kernel_load,
        end: loaded.kernel_end,
    })
}

/// Loads the initrd at the highest page-aligned address of low memory,
/// above the kernel, as bootloaders do.
pub fn load_initrd(mem: &Memory, path: &Path, kernel_end: u64) -> Result<Initrd, Error> {
    let read_err = |source| Error::ReadInitrd {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let low_end = (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START);
    let too_large = || Error::InitrdTooLarge {
        path: path.into(),
        size,
    };
    let address = low_end.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if address < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(|e| read_err(std::io::Error::other(e)))?;
    Ok(Initrd {
        address: GuestAddress(address),
        size: size as usize,
    })
}

/// The command line every husk guest gets. Bare words would reach the
/// agent's argv (and make it refuse to start), so there are none.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// Builds the command line: base, virtio-mmio devices, then `extra`.
pub fn cmdline(devices: &[(u64, u64, u32)], extra: Option<&str>) -> Result<Cmdline, Error> {
    let err = |e: linux_loader::cmdline::Error| Error::Cmdline(e.to_string());
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(err)?;
    cmdline.insert_str(BASE_CMDLINE).map_err(err)?;
    for &(base, size, irq) in devices {
        cmdline
            .add_virtio_mmio_device(size, GuestAddress(base), irq, None)
            .map_err(err)?;
    }
    if let Some(extra) = extra.filter(|e| !e.trim().is_empty()) {
        cmdline.insert_str(extra.trim()).map_err(err)?;
    }
    Ok(cmdline)
}

/// Writes the command line, zero page and MP table.
pub fn write_boot_info(
    mem: &Memory,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
    vcpus: u8,
) -> Result<(), Error> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    let len = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    boot_params::write(mem, GuestAddress(CMDLINE_START), len, initrd)?;
    mptable::write(mem, vcpus)?;
    Ok(())
}

/// Reads back a NUL-terminated string (tests).
#[cfg(test)]
fn read_cstr(mem: &Memory, addr: u64) -> String {
    let mut bytes = vec![0u8; CMDLINE_MAX_SIZE];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memory(mib: usize) -> Memory {
        Memory::from_ranges(&crate::arch::ram_regions((mib as u64) << 20)).unwrap()
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("husk-vmm-boot-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(contents).unwrap();
        path
    }

    #[test]
    fn cmdline_lists_devices_and_extra_after_the_base() {
        let cmdline = cmdline(&[(0xd000_0000, 0x1000, 5)], Some(" husk.debug=1 ")).unwrap();
        let text = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(
            text,
            format!("{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 husk.debug=1")
        );
    }

    #[test]
    fn non_elf_kernels_are_refused_naming_the_file() {
        let path = temp_file("bzimage", b"MZ\x00\x00not an elf at all");
        let err = load_kernel(&memory(16), &path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not an ELF"), "{err}");
        let missing = load_kernel(&memory(16), Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/vmlinux"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_page_aligned() {
        let path = temp_file("initrd", &[7u8; 5000]);
        let mem = memory(32);
        let initrd = load_initrd(&mem, &path, 0x100_0000).unwrap();
        assert_eq!(initrd.size, 5000);
        assert_eq!(initrd.address.raw_value() % 0x1000, 0);
        assert!(initrd.address.raw_value() + 5000 <= 32 << 20);
        let mut back = [0u8; 5000];
        mem.read_slice(&mut back, initrd.address).unwrap();
        assert_eq!(back, [7u8; 5000]);
        // Above a kernel that fills memory, there is no room.
        assert!(matches!(
            load_initrd(&mem, &path, (32 << 20) - 100),
            Err(Error::InitrdTooLarge { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn boot_info_writes_the_cmdline_where_the_zero_page_says() {
        let mem = memory(16);
        let cmdline = cmdline(&[], None).unwrap();
        write_boot_info(&mem, &cmdline, None, 2).unwrap();
        assert_eq!(read_cstr(&mem, CMDLINE_START), BASE_CMDLINE);
        let magic: [u8; 4] = mem
            .read_obj(GuestAddress(crate::arch::layout::EBDA_START))
            .unwrap();
        assert_eq!(&magic, b"_MP_");
    }
}
