//! husk-cri-e2e: the CRI end-to-end suite, the pods benchmark and the demo,
//! run where KVM boots Linux (inside the rig's L1 host, or natively). It
//! starts a local registry with test images built from busybox, starts the
//! husk daemon and drives it over the CRI.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use husk_cri_tests::daemon::DaemonSetup;
use husk_cri_tests::suite::{self, Inputs, TestImageRefs};

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    husk: PathBuf,
    #[arg(long)]
    vmm: PathBuf,
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initramfs: PathBuf,
    /// Static busybox the test images are built from.
    #[arg(long)]
    busybox: PathBuf,
    /// Debian's docker-registry binary.
    #[arg(long)]
    registry: PathBuf,
    /// Scratch folder (daemon state, images, registry storage, logs).
    #[arg(long, default_value = "/tmp/husk-e2e")]
    work: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The CRI suite.
    Suite,
    /// The pods benchmark.
    Bench {
        #[arg(long, default_value_t = 20)]
        pods: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// One pod whose container prints `hello from a husk microVM`.
    Demo,
}

/// Past this, the run is stuck (a thread blocked in the kernel, where no
/// async timeout can reach it): report what every process is doing and
/// fail, rather than wait for the rig's deadline.
const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(420);

fn watchdog(after: std::time::Duration, daemon_log: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        eprintln!("husk-cri-e2e: FAILED: still running after {after:?}; processes:");
        eprintln!("{}", husk_cri_tests::daemon::process_table());
        let log = std::fs::read_to_string(&daemon_log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "daemon log tail:\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        );
        std::process::exit(3);
    });
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let limit = match cli.what {
        // Each pod takes seconds even in the nested rig.
        What::Bench { pods, .. } => WATCHDOG + std::time::Duration::from_secs(30 * 2 * pods as u64),
        _ => WATCHDOG,
    };
    watchdog(limit, cli.work.join("daemon").join("husk.log"));
    if let Err(error) = runtime.block_on(run(cli)) {
        eprintln!("husk-cri-e2e: FAILED: {error:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&cli.work);
    std::fs::create_dir_all(&cli.work)?;
    // The rig's L1 host starts with loopback down.
    let _ = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let registry =
        husk_tests::registry::TestRegistry::start_with(&cli.registry, &cli.work.join("registry"))
            .context("cannot start the local registry")?;
    let pushed = husk_tests::registry::push_test_images(registry.addr(), &cli.busybox)
        .await
        .context("cannot push the test images")?;
    let inputs = Inputs {
        daemon: DaemonSetup {
            husk: cli.husk,
            vmm: cli.vmm,
            kernel: cli.kernel,
            initramfs: cli.initramfs,
            root: cli.work.join("daemon"),
            insecure_registries: vec![registry.addr().to_string()],
            boot_timeout_secs: 300,
        },
        images: TestImageRefs {
            multi: pushed.multi.reference.clone(),
            index: pushed.index.reference.clone(),
            single: pushed.single.reference.clone(),
        },
        logs: cli.work.join("logs"),
    };
    match cli.what {
        What::Suite => suite::run(&inputs).await,
        What::Bench { pods, concurrency } => {
            husk_cri_tests::bench::run(&inputs, pods, concurrency).await
        }
        What::Demo => husk_cri_tests::demo::run(&inputs).await,
    }
}
