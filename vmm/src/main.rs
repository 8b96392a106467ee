use clap::Parser;
use husk_vmm::builder::{self, Error};
use husk_vmm::config::VmConfig;
use husk_vmm::vstate::exit::ExitReason;

/// Exit statuses: the guest stopped by itself, setup failed, or the VM
/// failed while running.
const EXIT_GUEST_STOPPED: i32 = 0;
const EXIT_SETUP_FAILED: i32 = 1;
const EXIT_RUN_FAILED: i32 = 2;

fn main() {
    let config = VmConfig::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(config.log_level)
        .with_target(false)
        .init();
    let status = match builder::run(&config) {
        Ok(ExitReason::GuestStopped(why)) => {
            tracing::info!(why, "guest stopped");
            EXIT_GUEST_STOPPED
        }
        Ok(ExitReason::Error(message)) => {
            eprintln!("husk-vmm: the VM failed: {message}");
            EXIT_RUN_FAILED
        }
        Err(error @ Error::EventLoop(_)) => {
            eprintln!("husk-vmm: the VM failed: {error}");
            EXIT_RUN_FAILED
        }
        Err(error) => {
            eprintln!("husk-vmm: error: {error}");
            EXIT_SETUP_FAILED
        }
    };
    // vCPU threads may still be inside KVM_RUN; exiting the process ends them.
    std::process::exit(status);
}
