//! Routing of guest port-I/O and MMIO accesses that exit to user space to
//! the device that owns the address. A sorted map from start address to
//! (length, device): small, and lookups are one `range` query.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use husk_virtio::MmioTransport;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device window {start:#x}+{len:#x} overlaps another device")]
    Overlap { start: u64, len: u64 },
    #[error("device window at {start:#x} has zero length")]
    Empty { start: u64 },
}

/// A device on the port-I/O bus; `offset` is relative to its first port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device on the MMIO bus.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

/// An address space of devices.
pub struct Bus<D: ?Sized> {
    devices: BTreeMap<u64, (u64, Arc<Mutex<D>>)>,
}

impl<D: ?Sized> Default for Bus<D> {
    fn default() -> Self {
        Self {
            devices: BTreeMap::new(),
        }
    }
}

impl<D: ?Sized> Bus<D> {
    /// Places `device` at `start..start+len`.
    pub fn insert(&mut self, start: u64, len: u64, device: Arc<Mutex<D>>) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::Empty { start });
        }
        let end = start
            .checked_add(len)
            .ok_or(Error::Overlap { start, len })?;
        let before = self.devices.range(..end).next_back();
        if let Some((&other, &(other_len, _))) = before {
            if other + other_len > start {
                return Err(Error::Overlap { start, len });
            }
        }
        self.devices.insert(start, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset into it.
    pub fn resolve(&self, addr: u64) -> Option<(&Arc<Mutex<D>>, u64)> {
        let (&start, (len, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - start;
        (offset < *len).then_some((device, offset))
    }
}

fn lock<D: ?Sized>(device: &Mutex<D>) -> std::sync::MutexGuard<'_, D> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bus<dyn PioDevice> {
    /// A read nobody answers sees the floating bus: all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.resolve(port.into()) {
            Some((device, offset)) => lock(device).read(offset as u16, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((device, offset)) = self.resolve(port.into()) {
            lock(device).write(offset as u16, data);
        }
    }
}

impl Bus<dyn MmioDevice> {
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.resolve(addr) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((device, offset)) = self.resolve(addr) {
            lock(device).write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Echo {
        last: Option<(u16, Vec<u8>)>,
    }

    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_owner_with_relative_offsets() {
        let echo = Arc::new(Mutex::new(Echo::default()));
        let mut bus: Bus<dyn PioDevice> = Bus::default();
        bus.insert(0x3f8, 8, echo.clone()).unwrap();
        let mut data = [0u8; 1];
        bus.read(0x3fa, &mut data);
        assert_eq!(data, [2]);
        bus.write(0x3ff, &[7]);
        assert_eq!(echo.lock().unwrap().last, Some((7, vec![7])));
        bus.read(0x400, &mut data);
        assert_eq!(data, [0xff], "past the window nobody answers");
        bus.read(0x3f7, &mut data);
        assert_eq!(data, [0xff]);
    }

    #[test]
    fn overlapping_or_empty_windows_are_refused() {
        let mut bus: Bus<dyn PioDevice> = Bus::default();
        let dev = || Arc::new(Mutex::new(Echo::default()));
        bus.insert(0x60, 5, dev()).unwrap();
        assert!(bus.insert(0x64, 1, dev()).is_err());
        assert!(bus.insert(0x5c, 5, dev()).is_err());
        assert!(bus.insert(0x80, 0, dev()).is_err());
        bus.insert(0x65, 1, dev()).unwrap();
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
    }
}
