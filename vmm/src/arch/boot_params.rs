//! The zero page of the Linux x86 boot protocol: command line, initrd and
//! the e820 memory map, written through linux-loader's configurator.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, GuestAddress, GuestMemory};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too many e820 entries")]
    E820Full,
    #[error("cannot write the zero page: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Where the initrd ended up.
#[derive(Debug, Clone, Copy)]
pub struct Initrd {
    pub address: GuestAddress,
    pub size: usize,
}

/// Fills and writes the zero page.
pub fn write<M: GuestMemory>(
    mem: &M,
    cmdline_addr: GuestAddress,
    cmdline_len: usize,
    initrd: Option<Initrd>,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = cmdline_addr.raw_value() as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    for (start, len) in e820_ram(mem) {
        add_e820_entry(&mut params, start, len)?;
    }
    let zero_page = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&zero_page, mem)?;
    Ok(())
}

/// RAM ranges for the e820 map: base memory below the EBDA, then high
/// memory up to the MMIO gap, then whatever lies above 4 GiB.
pub fn e820_ram<M: GuestMemory>(mem: &M) -> Vec<(u64, u64)> {
    let end = mem.last_addr().raw_value() + 1;
    let mut ranges = vec![(0, EBDA_START)];
    let low_end = end.min(MMIO_GAP_START);
    ranges.push((HIMEM_START, low_end - HIMEM_START));
    if end > MMIO_GAP_END {
        ranges.push((MMIO_GAP_END, end - MMIO_GAP_END));
    }
    ranges
}

fn add_e820_entry(params: &mut boot_params, addr: u64, size: u64) -> Result<(), Error> {
    let slot = params.e820_entries as usize;
    let entry = params.e820_table.get_mut(slot).ok_or(Error::E820Full)?;
    *entry = boot_e820_entry {
        addr,
        size,
        type_: E820_RAM,
    };
    params.e820_entries += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn zero_page_carries_cmdline_initrd_and_memory_map() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let initrd = Initrd {
            address: GuestAddress(0x300_0000),
            size: 0x1234,
        };
        write(&mem, GuestAddress(0x20000), 42, Some(initrd)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 2);
        let high = params.e820_table[1];
        assert_eq!(
            ({ high.addr }, { high.size }),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn memory_above_the_gap_gets_its_own_entry() {
        let regions = crate::arch::ram_regions(4 << 30);
        let mem = GuestMemoryMmap::<()>::from_ranges(&regions).unwrap();
        let ranges = e820_ram(&mem);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[2], (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START));
    }
}
