//! `cargo xtask`: the project's own commands.

mod bench;
mod cache;
mod cmd;
mod critest;
mod demo;
mod guest;
mod initramfs;
mod kernel;
mod rig;
mod static_bin;
mod test;

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
    /// Run a shell command in the nested KVM rig (natively where this host's
    /// KVM can boot Linux), with the guest image and in-rig programs under
    /// $HUSK_RIG_DIR. Exits with the command's status.
    Rig {
        /// Don't build the guest and in-rig programs (checks the rig alone).
        #[arg(long)]
        bare: bool,
        /// Whole-run deadline in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The command line to run.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The main job: build everything and boot a husk microVM guest, talking
    /// to its agent over vsock (in the nested rig unless this host's KVM can
    /// boot Linux).
    Demo,
    /// Run every check CI runs: fmt, clippy, unit, integration and rig tests.
    Test,
    /// cri-tools' CRI conformance suite (critest, from $HUSK_CRITEST or
    /// ../shared/tools/cri-tools/critest) against husk in the rig; passes
    /// when exactly the specs in tests/critest/expected-failures.toml fail.
    /// Prints `critest passed=.. failed=.. skipped=..`.
    Critest {
        /// Only the specs matching this regular expression.
        #[arg(long)]
        focus: Option<String>,
        /// Run critest's benchmarks instead and print their medians.
        #[arg(long)]
        benchmark: bool,
        /// Extra critest flags (after `--`).
        #[arg(last = true)]
        extra_args: Vec<String>,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Boot the guest N times under QEMU and husk-vmm alternately in one
    /// rig run; prints `boot <vmm> median_ms=.. p95_ms=.. rss_mib=..
    /// overhead_mib=.. runs=.. config=..` per VMM, then
    /// `ratio husk-vmm/qemu median=..`.
    Boot {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Run a busybox /bin/true container N times under husk-agent (a root
    /// process on this host, over a unix socket) and runc alternately, then
    /// exec /bin/true N times into a running one of each; prints `<agent|runc>
    /// <create_start|exec> median_ms=.. p95_ms=.. runs=..` lines, then
    /// `ratio agent/runc create_start=.. exec=..`.
    Agent {
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// Pods through the CRI in the rig: RunPodSandbox to first log line,
    /// serial and concurrent, with memory figures.
    Pods {
        #[arg(long, default_value_t = 20)]
        pods: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

/// Debian packages the workspace build itself needs: `protoc` for the CRI
/// bindings (the k8s-cri crate compiles its .proto at build time). xtask
/// does not depend on them, so it can install them before building the
/// rest.
const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    husk_tests::debian::ensure_installed(BUILD_PACKAGES)?;
    match cli.command {
        Command::Guest => {
            let image = guest::build()?;
            println!("vmlinux   {}", image.vmlinux.display());
            println!("initramfs {}", image.initramfs.display());
            Ok(())
        }
        Command::Rig {
            bare,
            timeout,
            command,
        } => {
            let options = husk_tests::rig::Options {
                timeout: std::time::Duration::from_secs(timeout),
                ..Default::default()
            };
            let run = rig::run(&command.join(" "), bare, &options)?;
            std::process::exit(run.exit_code);
        }
        Command::Demo => demo::run(),
        Command::Test => test::run(),
        Command::Critest {
            focus,
            benchmark,
            extra_args,
        } => critest::run(&critest::Selection {
            focus,
            benchmark,
            extra_args,
        }),
        Command::Bench {
            which: Bench::Boot { runs },
        } => bench::boot(runs),
        Command::Bench {
            which: Bench::Agent { runs },
        } => bench::agent(runs),
        Command::Bench {
            which: Bench::Pods { pods, concurrency },
        } => bench::pods(pods, concurrency),
    }
}
