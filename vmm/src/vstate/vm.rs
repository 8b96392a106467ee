//! The KVM VM: checks the host can run us, maps guest memory into slots,
//! and creates the in-kernel interrupt controllers and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemory, GuestMemoryRegion};

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use husk_virtio::GuestMemory as Memory;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are we allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not the stable version 12")]
    ApiVersion(i32),
    #[error("this KVM lacks {0:?}, which husk-vmm needs")]
    MissingCap(Cap),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// Capabilities without which we do not start.
const REQUIRED_CAPS: [Cap; 6] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
];

/// A VM with its memory mapped and interrupt controllers in the kernel.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens KVM and checks it has what we need.
    pub fn new() -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS.iter().find(|&&c| !kvm.check_extension(c)) {
            return Err(Error::MissingCap(*cap));
        }
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        Ok(Self { kvm, fd })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Hands every guest memory region to KVM, one slot each.
    pub fn map_memory(&self, mem: &Memory) -> Result<(), Error> {
        for (slot, region) in mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the mapping belongs to `mem`, which the VMM keeps
            // alive (cloned into every device and the builder) until the
            // process exits, so KVM never sees it unmapped.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(kvm_err("map guest memory"))?;
        }
        Ok(())
    }

    /// Creates the PIC + IOAPIC + LAPICs and the PIT inside KVM. With them
    /// timer ticks and interrupt delivery never leave the kernel.
    pub fn create_irqchip_and_pit(&self) -> Result<(), Error> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        self.fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(kvm_err("create the PIT"))?;
        Ok(())
    }
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
