//! KVM objects: the VM (memory slots, in-kernel irqchip and PIT) and its
//! vCPUs (register setup and the run loop on their own threads).

pub mod exit;
pub mod vcpu;
pub mod vm;
