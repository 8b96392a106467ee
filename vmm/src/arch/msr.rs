//! Boot values for the MSRs Linux reads before it writes them itself.
//! The TSC is left alone: KVM starts every vCPU's TSC in step, and writing
//! it per vCPU at slightly different times made the guest declare the TSCs
//! unsynchronized.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

mod index {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSR values every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (index::IA32_SYSENTER_CS, 0),
        (index::IA32_SYSENTER_ESP, 0),
        (index::IA32_SYSENTER_EIP, 0),
        (index::STAR, 0),
        (index::CSTAR, 0),
        (index::KERNEL_GS_BASE, 0),
        (index::SYSCALL_MASK, 0),
        (index::LSTAR, 0),
        (index::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (index::MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs, one at a time so that an MSR this CPU's KVM does
/// not know (MISC_ENABLE on AMD) costs only itself. Returns how many KVM
/// accepted.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<usize, kvm_ioctls::Error> {
    let mut accepted = 0;
    for entry in boot_msrs() {
        let msrs = Msrs::from_entries(&[entry]).expect("one MSR fits");
        match vcpu.set_msrs(&msrs)? {
            1 => accepted += 1,
            _ => tracing::debug!(
                msr = format_args!("{:#x}", entry.index),
                "KVM did not take MSR"
            ),
        }
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_fast_strings_and_writeback_mtrrs() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(index::IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(index::MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(index::LSTAR), Some(0));
    }
}
