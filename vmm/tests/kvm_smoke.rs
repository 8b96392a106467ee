//! The run loop on this machine's own /dev/kvm, with a tiny real-mode
//! guest: it prints through the emulated UART and pulls the i8042 reset
//! line, which must end the VMM's event loop with a clean stop. (A Linux
//! guest needs the nested rig: see tests/tests/vmm_boot.rs.)

use std::path::Path;

use husk_vmm::builder::Vmm;
use husk_vmm::legacy::ConsoleSink;
use husk_vmm::vstate::exit::ExitReason;
use husk_vmm::vstate::vcpu::Vcpu;
use vm_memory::{Bytes, GuestAddress};

const CODE_ADDR: u64 = 0x1000;

/// mov dx,0x3f8; mov al,'h'; out dx,al; mov al,'i'; out dx,al;
/// mov al,'\n'; out dx,al; in al,0x64 (status); mov al,0xfe; out 0x64,al; hlt
const GUEST: &[u8] = &[
    0xba, 0xf8, 0x03, 0xb0, b'h', 0xee, 0xb0, b'i', 0xee, 0xb0, b'\n', 0xee, 0xe4, 0x64, 0xb0,
    0xfe, 0xe6, 0x64, 0xf4,
];

#[test]
fn real_mode_guest_prints_on_the_console_and_resets_cleanly() {
    if !Path::new("/dev/kvm").exists() {
        panic!("/dev/kvm is missing: this smoke test needs KVM (any flavour, even kvm_pvm)");
    }
    let console =
        std::env::temp_dir().join(format!("husk-vmm-smoke-{}.console", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let mut vmm = Vmm::new(16 << 20, ConsoleSink::file(&console).unwrap()).expect("VM set up");
    vmm.mem()
        .write_slice(GUEST, GuestAddress(CODE_ADDR))
        .unwrap();

    let vcpu = Vcpu::new(vmm.vm(), 0).unwrap();
    vcpu.configure(vmm.vm(), 1).unwrap();
    let mut sregs = vcpu.fd().get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.fd().set_sregs(&sregs).unwrap();
    let mut regs = vcpu.fd().get_regs().unwrap();
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.fd().set_regs(&regs).unwrap();

    vmm.start_vcpus(vec![vcpu]).unwrap();
    let reason = vmm.run_until_exit().unwrap();
    assert_eq!(reason, ExitReason::GuestStopped("i8042 reset"));
    let printed = std::fs::read_to_string(&console).unwrap();
    assert_eq!(printed, "hi\n");
    let _ = std::fs::remove_file(&console);
}
