//! Everything x86_64-specific about starting a Linux guest: the memory
//! layout, the boot protocol structures, page tables and segments, CPUID,
//! MSRs, the local APIC and the MP table for SMP.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

use vm_memory::{GuestAddress, GuestUsize};

/// The guest RAM regions for `size` bytes: everything below the MMIO gap
/// first, the rest from 4 GiB up.
pub fn ram_regions(size: GuestUsize) -> Vec<(GuestAddress, usize)> {
    let below = size.min(layout::MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), below as usize)];
    if size > below {
        regions.push((GuestAddress(layout::MMIO_GAP_END), (size - below) as usize));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_and_large_memory_skips_the_gap() {
        assert_eq!(ram_regions(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let big = ram_regions(4 << 30);
        assert_eq!(big[0], (GuestAddress(0), layout::MMIO_GAP_START as usize));
        assert_eq!(big[1].0, GuestAddress(layout::MMIO_GAP_END));
        assert_eq!(big[0].1 + big[1].1, 4 << 30);
    }
}
