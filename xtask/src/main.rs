//! `cargo xtask`: the project's own commands.

mod cache;
mod cmd;
mod guest;
mod initramfs;
mod kernel;
mod static_bin;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "husk's project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the guest: kernel (vmlinux) and initramfs (husk-agent as /init).
    Guest,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Guest => {
            let image = guest::build()?;
            println!("vmlinux   {}", image.vmlinux.display());
            println!("initramfs {}", image.initramfs.display());
            Ok(())
        }
    }
}
