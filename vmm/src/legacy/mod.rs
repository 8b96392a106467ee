//! The two PC devices a Linux guest needs: a 16550A UART for the console
//! and the i8042 controller's CPU-reset line, both from vm-superio, put on
//! the port-I/O bus.

mod i8042;
mod serial;

pub use i8042::{
    ResetLine, ResetTrigger, DATA_PORT as I8042_DATA_PORT, PORT_COUNT as I8042_PORT_COUNT,
};
pub use serial::{ConsoleSink, SerialConsole, COM1_PORT, PORT_COUNT as COM1_PORT_COUNT};

use vmm_sys_util::eventfd::EventFd;

/// vm-superio raises interrupts through a `Trigger`; the serial port's
/// writes the irqfd KVM injects its IRQ from.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
