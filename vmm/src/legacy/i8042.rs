//! Ports 0x60/0x64: only the "pulse reset line" command matters. Linux
//! with `reboot=k` sends it to reboot, which for a microVM means "stop":
//! the VMM exits 0 and whoever started it decides what comes next.

use std::sync::Arc;

use vm_superio::I8042Device;

use crate::bus::PioDevice;
use crate::vstate::exit::{ExitReason, ExitSignal};

pub const DATA_PORT: u16 = 0x60;
/// The window covers 0x60..=0x64: data at offset 0, command/status at 4.
pub const PORT_COUNT: u16 = 5;

/// Fires the VM's exit signal when the guest pulses the reset line.
#[derive(Debug, Clone)]
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.stop(ExitReason::GuestStopped("i8042 reset"));
        Ok(())
    }
}

/// The i8042 as a port-I/O device. Every read returns 0: status "input
/// buffer empty, no output", so the kernel's reset loop never waits.
pub struct ResetLine {
    controller: I8042Device<ResetTrigger>,
}

impl ResetLine {
    pub fn new(reset: ResetTrigger) -> Self {
        Self {
            controller: I8042Device::new(reset),
        }
    }
}

impl PioDevice for ResetLine {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let [byte] = data {
            *byte = self.controller.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let [byte] = data {
            let Ok(()) = self.controller.write(offset as u8, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_fires_the_reset_event_and_status_reads_empty() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let reset = exit.event();
        let mut dev = ResetLine::new(ResetTrigger(exit.clone()));
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
        dev.write(4, &[0x20]);
        assert!(reset.read().is_err(), "only 0xfe resets");
        dev.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        assert_eq!(exit.reason(), Some(ExitReason::GuestStopped("i8042 reset")));
    }
}
