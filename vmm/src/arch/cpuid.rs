//! The CPUID a vCPU reports: KVM's supported set, with the topology made
//! to match our vCPUs and the features we do not back filtered out.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// What the guest should believe about itself.
#[derive(Debug, Clone, Copy)]
pub struct CpuidOptions {
    pub vcpu_id: u8,
    pub vcpu_count: u8,
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC can do TSC-deadline,
    /// which spares the kernel a slow APIC-timer calibration at boot.
    pub tsc_deadline: bool,
}

mod leaf {
    pub const FEATURES: u32 = 0x1;
    pub const CACHE_PARAMS: u32 = 0x4;
    pub const THERMAL_POWER: u32 = 0x6;
    pub const PERFMON: u32 = 0xa;
    pub const EXT_FEATURES: u32 = 0x7;
    pub const XSAVE: u32 = 0xd;
    pub const EXT_TOPOLOGY: u32 = 0xb;
    pub const V2_EXT_TOPOLOGY: u32 = 0x1f;
    pub const AMD_SIZES: u32 = 0x8000_0008;
    pub const AMD_EXT_APIC_ID: u32 = 0x8000_001e;
}

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for one vCPU.
pub fn filter(cpuid: &mut CpuId, options: CpuidOptions) {
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, options);
    }
    make_xsave_consistent(cpuid.as_mut_slice());
}

/// XSAVE state components and the feature flag (leaf, register, bit) that
/// must be present for the guest to use each one.
const XSAVE_COMPONENTS: [(u32, u32, Reg, u32); 7] = [
    (2, leaf::FEATURES, Reg::Ecx, 28),     // AVX
    (3, leaf::EXT_FEATURES, Reg::Ebx, 14), // MPX bounds
    (4, leaf::EXT_FEATURES, Reg::Ebx, 14), // MPX config
    (5, leaf::EXT_FEATURES, Reg::Ebx, 16), // AVX-512 opmask
    (6, leaf::EXT_FEATURES, Reg::Ebx, 16), // AVX-512 ZMM_Hi256
    (7, leaf::EXT_FEATURES, Reg::Ebx, 16), // AVX-512 Hi16_ZMM
    (9, leaf::EXT_FEATURES, Reg::Ecx, 3),  // PKRU
];

#[derive(Clone, Copy)]
enum Reg {
    Ebx,
    Ecx,
}

/// Leaf 0xd must only describe state components whose features the CPU
/// reports, with sizes to match; otherwise Linux finds the XSAVE layout
/// inconsistent and turns XSAVE off. KVM copies the host's leaf, and an
/// emulated host (the nested rig) can report AVX state without AVX.
fn make_xsave_consistent(entries: &mut [kvm_cpuid_entry2]) {
    let has = |function: u32, reg: Reg, bit: u32| {
        entries.iter().any(|e| {
            e.function == function
                && e.index == 0
                && match reg {
                    Reg::Ebx => e.ebx,
                    Reg::Ecx => e.ecx,
                } & (1 << bit)
                    != 0
        })
    };
    let dropped: Vec<u32> = XSAVE_COMPONENTS
        .iter()
        .filter(|&&(_, function, reg, bit)| !has(function, reg, bit))
        .map(|&(component, ..)| component)
        .collect();
    let mut max_end = 576; // legacy area + XSAVE header
    for entry in entries
        .iter_mut()
        .filter(|e| e.function == leaf::XSAVE && e.index >= 2)
    {
        if dropped.contains(&entry.index) {
            *entry = kvm_cpuid_entry2 {
                function: entry.function,
                index: entry.index,
                flags: entry.flags,
                ..Default::default()
            };
        } else if entry.eax != 0 && entry.index < 32 {
            max_end = max_end.max(entry.ebx + entry.eax);
        }
    }
    if let Some(main) = entries
        .iter_mut()
        .find(|e| e.function == leaf::XSAVE && e.index == 0)
    {
        for component in &dropped {
            main.eax &= !(1 << component);
        }
        main.ecx = max_end;
    }
}

fn filter_entry(entry: &mut kvm_cpuid_entry2, opt: CpuidOptions) {
    let id = u32::from(opt.vcpu_id);
    let count = u32::from(opt.vcpu_count);
    match entry.function {
        leaf::FEATURES => {
            // EBX: initial APIC id, logical processors per package,
            // CLFLUSH line size in 8-byte units.
            entry.ebx = (id << 24) | (count << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if opt.tsc_deadline {
                entry.ecx |= ECX_TSC_DEADLINE;
            } else {
                entry.ecx &= !ECX_TSC_DEADLINE;
            }
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        leaf::CACHE_PARAMS => {
            // Cores sharing the package, minus one, in EAX[31:26].
            entry.eax = (entry.eax & 0x03ff_ffff) | ((count.saturating_sub(1) & 0x3f) << 26);
        }
        // No thermal sensors, power management or PMU to drive: claiming
        // none keeps the guest from probing MSRs we do not back.
        leaf::THERMAL_POWER | leaf::PERFMON => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        leaf::EXT_TOPOLOGY | leaf::V2_EXT_TOPOLOGY => {
            // One thread per core, all vCPUs as cores of one package.
            entry.edx = id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    entry.eax = bits_for(count);
                    entry.ebx = count;
                    entry.ecx = (2 << 8) | 1;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        leaf::AMD_SIZES => {
            entry.ecx = (entry.ecx & !0xff) | (count.saturating_sub(1) & 0xff);
        }
        leaf::AMD_EXT_APIC_ID => {
            entry.eax = id;
            entry.ebx = id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

/// Bits of APIC id needed to number `count` cores.
fn bits_for(count: u32) -> u32 {
    u32::BITS - count.saturating_sub(1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn run(function: u32, index: u32, opt: CpuidOptions) -> kvm_cpuid_entry2 {
        let mut cpuid = CpuId::from_entries(&[entry(function, index)]).unwrap();
        filter(&mut cpuid, opt);
        cpuid.as_slice()[0]
    }

    const TWO: CpuidOptions = CpuidOptions {
        vcpu_id: 1,
        vcpu_count: 2,
        tsc_deadline: true,
    };

    #[test]
    fn leaf_1_carries_apic_id_count_tsc_deadline_and_hypervisor() {
        let e = run(1, 0, TWO);
        assert_eq!(e.ebx >> 24, 1);
        assert_eq!((e.ebx >> 16) & 0xff, 2);
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let single = run(
            1,
            0,
            CpuidOptions {
                vcpu_id: 0,
                vcpu_count: 1,
                tsc_deadline: false,
            },
        );
        assert_eq!(single.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(single.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_reports_cores_and_x2apic_id() {
        let core = run(0xb, 1, TWO);
        assert_eq!((core.eax, core.ebx, core.edx), (1, 2, 1));
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn xsave_components_without_their_feature_are_dropped_and_sizes_fixed() {
        let leaf1 = kvm_cpuid_entry2 {
            function: 1,
            ecx: 0,
            ..Default::default()
        }; // no AVX
        let main = kvm_cpuid_entry2 {
            function: 0xd,
            index: 0,
            eax: 0x7,
            ebx: 0x240,
            ecx: 0x340,
            ..Default::default()
        };
        let avx = kvm_cpuid_entry2 {
            function: 0xd,
            index: 2,
            eax: 0x100,
            ebx: 0x240,
            ..Default::default()
        };
        let mut entries = [leaf1, main, avx];
        make_xsave_consistent(&mut entries);
        assert_eq!((entries[1].eax, entries[1].ecx), (0x3, 576));
        assert_eq!((entries[2].eax, entries[2].ebx), (0, 0));

        entries = [
            kvm_cpuid_entry2 {
                ecx: 1 << 28,
                ..leaf1
            },
            main,
            avx,
        ];
        make_xsave_consistent(&mut entries);
        assert_eq!(
            (entries[1].eax, entries[1].ecx),
            (0x7, 0x340),
            "AVX present: kept"
        );
    }

    #[test]
    fn pmu_is_hidden() {
        let e = run(0xa, 0, TWO);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
    }
}
