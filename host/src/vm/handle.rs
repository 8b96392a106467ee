//! The daemon's handle on a running pod VM, whatever runs it: a monitor
//! task owns the process, publishes its exit and kills it when asked. The
//! handle reports; it never calls back into the runtime. Dropping the
//! handle (the daemon stopping) leaves the VM running: only an explicit
//! [`VmHandle::kill`] ends it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use husk_agent_client::AgentAddr;
use tokio::sync::{mpsc, watch};

use super::VmExit;
use crate::deadlines::VM_KILL_WAIT;

/// What a controller hands the monitor: something that can be killed and
/// whose end can be awaited.
pub trait VmProcess: Send + Sync + 'static {
    /// Ends it at once (SIGKILL for a process).
    fn kill(&self);
    /// Resolves when it has ended, saying how.
    fn exited(&self) -> Pin<Box<dyn Future<Output = VmExit> + Send + '_>>;
}

/// A pod's running VM: who it is, where its agent listens, how it ends.
#[derive(Debug)]
pub struct VmHandle {
    pub pid: i32,
    pub start_time: u64,
    agent: AgentAddr,
    kill: mpsc::Sender<()>,
    exit: watch::Receiver<Option<VmExit>>,
}

impl VmHandle {
    /// Starts the monitor of `process` (needs a tokio runtime).
    pub fn watch(pid: i32, start_time: u64, agent: AgentAddr, process: impl VmProcess) -> VmHandle {
        let (kill_tx, mut kill_rx) = mpsc::channel::<()>(1);
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let exited = process.exited();
            tokio::pin!(exited);
            let mut watching = true;
            let exit = loop {
                tokio::select! {
                    exit = &mut exited => break exit,
                    order = kill_rx.recv(), if watching => match order {
                        Some(()) => process.kill(),
                        // Every handle is gone: nobody will ask for a kill
                        // any more; keep reporting the exit for receivers.
                        None => watching = false,
                    },
                }
            };
            let _ = exit_tx.send(Some(exit));
        });
        VmHandle {
            pid,
            start_time,
            agent,
            kill: kill_tx,
            exit: exit_rx,
        }
    }

    /// Where the VM's agent is reached from the host.
    pub fn agent_addr(&self) -> &AgentAddr {
        &self.agent
    }

    /// How the VM ended, once it has.
    pub fn exit(&self) -> Option<VmExit> {
        *self.exit.borrow()
    }

    /// A receiver that sees the exit (for tasks that outlive a borrow).
    pub fn exit_receiver(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.clone()
    }

    /// Waits at most `deadline` for the VM to end on its own.
    pub async fn wait(&self, deadline: Duration) -> Option<VmExit> {
        wait_exit(self.exit.clone(), deadline).await
    }

    /// Kills the VM (if it still runs) and waits until it is gone.
    pub async fn kill(&self) -> Option<VmExit> {
        if let Some(exit) = self.exit() {
            return Some(exit);
        }
        let _ = self.kill.try_send(());
        self.wait(VM_KILL_WAIT).await
    }
}

/// Waits at most `deadline` for `exit` to be published.
pub async fn wait_exit(
    mut exit: watch::Receiver<Option<VmExit>>,
    deadline: Duration,
) -> Option<VmExit> {
    let wait = async move {
        match exit.wait_for(Option::is_some).await {
            Ok(value) => *value,
            Err(_) => None,
        }
    };
    tokio::time::timeout(deadline, wait).await.ok().flatten()
}
