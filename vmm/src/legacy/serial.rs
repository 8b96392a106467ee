//! COM1 at 0x3f8: the guest console, written to a file or our stdout.

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::bus::PioDevice;

pub const COM1_PORT: u16 = 0x3f8;
pub const PORT_COUNT: u16 = 8;

/// Where console bytes go. Line-buffered so a reader sees whole lines
/// promptly (tests wait for the agent's ready line) without a syscall per
/// byte.
pub enum ConsoleSink {
    Stdout(LineWriter<io::Stdout>),
    File(LineWriter<File>),
}

impl ConsoleSink {
    pub fn stdout() -> Self {
        Self::Stdout(LineWriter::new(io::stdout()))
    }

    /// Appends to `path`, creating it (a restarted VM keeps its history).
    pub fn file(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::File(LineWriter::new(file)))
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(w) => w.write(buf),
            Self::File(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::File(w) => w.flush(),
        }
    }
}

/// The UART, as a port-I/O device.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
    log: husk_virtio::RateLimitedLog,
}

impl SerialConsole {
    pub fn new(irq: EventFdTrigger, sink: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(irq, sink),
            log: husk_virtio::RateLimitedLog::default(),
        }
    }

    /// Flushes any partial last line (at VM exit).
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl PioDevice for SerialConsole {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let [byte] = data {
            *byte = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let [byte] = data {
            if let Err(error) = self.uart.write(offset as u8, *byte) {
                husk_virtio::warn_limited!(self.log, ?error, "serial: write failed");
            }
        }
    }
}
