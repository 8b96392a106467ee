//! The flat 64-bit segments the kernel's 64-bit entry point expects
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): a code
//! segment with L set, a data segment, and a TSS so that TR is valid.

use kvm_bindings::kvm_segment;

/// Descriptor access/flags words, as (flags << 8 | access) in the layout
/// of the descriptor's bits 40..55.
pub const CODE64: u16 = 0xa09b;
pub const DATA: u16 = 0xc093;
pub const TSS: u16 = 0x808b;

/// The boot GDT: null, code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    0,
    descriptor(CODE64, 0, 0xfffff),
    descriptor(DATA, 0, 0xfffff),
    descriptor(TSS, 0, 0xfffff),
];
pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

/// Packs a segment descriptor (Intel SDM vol. 3, 3.4.5).
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of the descriptor at GDT `index`.
pub fn kvm_segment_from(index: u16, entry: u64) -> kvm_segment {
    let granular = (entry >> 55) & 1;
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let limit = if granular == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: limit as u32,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_present_long_mode_execute_read() {
        let cs = kvm_segment_from(1, BOOT_GDT[1]);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.l, cs.db, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let entry = descriptor(0x0093, 0x1234_5678, 0xabcde);
        let seg = kvm_segment_from(2, entry);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!(seg.g, 0);
        assert_eq!(seg.unusable, 0);
    }
}
