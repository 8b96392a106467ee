//! One vCPU: its CPUID, MSRs, LAPIC and (for the boot CPU) registers, and
//! the loop that runs it on its own thread, sending the exits KVM cannot
//! handle itself to the device buses.

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd};

use super::exit::{ExitReason, ExitSignal};
use super::vm::{kvm_err, Error as VmError, Vm};
use crate::arch::{cpuid, lapic, msr, regs};
use crate::bus::{Bus, MmioDevice, PioDevice};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kvm(#[from] VmError),
    #[error("cannot set up vCPU registers: {0}")]
    Registers(#[from] regs::Error),
    #[error("cannot start the vCPU thread: {0}")]
    Thread(std::io::Error),
}

/// The buses a vCPU dispatches exits to.
#[derive(Clone)]
pub struct Buses {
    pub pio: Arc<Bus<dyn PioDevice>>,
    pub mmio: Arc<Bus<dyn MmioDevice>>,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Self, Error> {
        let fd = vm
            .fd()
            .create_vcpu(id.into())
            .map_err(kvm_err("create a vCPU"))?;
        Ok(Self { id, fd })
    }

    /// CPUID, MSRs and LAPIC for every vCPU, which also suffices for the
    /// application processors: the guest starts them with INIT/SIPI.
    pub fn configure(&self, vm: &Vm, vcpu_count: u8) -> Result<(), Error> {
        let mut cpuid: CpuId = vm
            .kvm()
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report supported CPUID"))?;
        cpuid::filter(
            &mut cpuid,
            cpuid::CpuidOptions {
                vcpu_id: self.id,
                vcpu_count,
                tsc_deadline: vm.kvm().check_extension(Cap::TscDeadlineTimer),
            },
        );
        self.fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        msr::setup_msrs(&self.fd).map_err(kvm_err("set MSRs"))?;
        lapic::setup_lapic(&self.fd).map_err(kvm_err("set up the local APIC"))?;
        Ok(())
    }

    /// Puts the boot vCPU at the kernel's 64-bit entry.
    pub fn set_boot_registers(&self, entry: u64, cr3: u64) -> Result<(), Error> {
        Ok(regs::setup_boot_vcpu(&self.fd, entry, cr3)?)
    }

    /// The raw fd (the smoke test sets real-mode registers through it).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU on a new thread until the guest stops or KVM fails;
    /// the outcome goes to `exit`.
    pub fn start(self, buses: Buses, exit: Arc<ExitSignal>) -> Result<JoinHandle<()>, Error> {
        thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            // Only our run loop runs here: a small stack keeps RSS down.
            .stack_size(256 << 10)
            .spawn(move || {
                let id = self.id;
                // A bug that panics here must still stop the VM (exit 2),
                // not leave the VMM waiting forever for a vCPU that is gone.
                let reason =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&buses)))
                        .unwrap_or_else(|_| {
                            ExitReason::Error(format!("vcpu{id}: run loop panicked"))
                        });
                exit.stop(reason);
            })
            .map_err(Error::Thread)
    }

    /// The run loop, until an exit that ends the VM.
    pub fn run(mut self, buses: &Buses) -> ExitReason {
        let id = self.id;
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => buses.pio.read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => buses.pio.write(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => buses.mmio.read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => buses.mmio.write(addr, data),
                // With the in-kernel LAPIC a HLT never reaches us; without
                // one (the smoke test) it means the guest is done.
                Ok(VcpuExit::Hlt) => return ExitReason::GuestStopped("halt"),
                Ok(VcpuExit::Shutdown) => return ExitReason::GuestStopped("triple fault"),
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestStopped("power off"),
                        KVM_SYSTEM_EVENT_RESET => ExitReason::GuestStopped("system reset"),
                        other => ExitReason::Error(format!("vcpu{id}: unknown system event {other}")),
                    }
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return ExitReason::Error(format!(
                        "vcpu{id}: KVM failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    return ExitReason::Error(format!("vcpu{id}: KVM internal error (emulation failure)"))
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => return ExitReason::Error(format!("vcpu{id}: unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return ExitReason::Error(format!("vcpu{id}: KVM_RUN failed: {e}")),
            }
        }
    }
}
