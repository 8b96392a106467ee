//! How the VM stops: whoever sees the end first (a vCPU, the i8042 reset
//! line, a fatal error) records why and kicks one eventfd the main event
//! loop waits on.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset or powered off: a clean stop, exit status 0.
    GuestStopped(&'static str),
    /// Something broke while running (KVM error, vCPU failure): exit
    /// status 2 (1 is for a VM that could not be set up).
    Error(String),
}

/// The VM-wide stop signal.
#[derive(Debug)]
pub struct ExitSignal {
    event: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            event: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the loop.
    pub fn stop(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(reason);
        let _ = self.event.write(1);
    }

    /// The eventfd the event loop polls.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The first recorded reason, if the VM stopped.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_the_event_fires() {
        let exit = ExitSignal::new().unwrap();
        assert_eq!(exit.reason(), None);
        exit.stop(ExitReason::Error("boom".into()));
        exit.stop(ExitReason::GuestStopped("later"));
        assert_eq!(exit.reason(), Some(ExitReason::Error("boom".into())));
        assert_eq!(exit.event().read().unwrap(), 2);
    }
}
