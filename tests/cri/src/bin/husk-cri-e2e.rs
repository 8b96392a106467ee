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
    /// cri-tools' critest, its reports written to `--out`.
    Critest {
        /// The critest binary.
        #[arg(long)]
        critest: PathBuf,
        /// A docker-registry storage holding the images critest pulls.
        #[arg(long)]
        images: PathBuf,
        /// A registry host those images are mirrored for (repeatable).
        #[arg(long = "upstream", required = true)]
        upstream_hosts: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        benchmark: bool,
        /// Extra critest flags.
        #[arg(last = true)]
        extra_args: Vec<String>,
    },
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
        // critest's own deadline (--ginkgo.timeout) is 80 minutes.
        What::Critest { .. } => std::time::Duration::from_secs(85 * 60),
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
    let setup = DaemonSetup {
        husk: cli.husk,
        vmm: cli.vmm,
        kernel: cli.kernel,
        initramfs: cli.initramfs,
        root: cli.work.join("daemon"),
        insecure_registries: Vec::new(),
        mirrors: Vec::new(),
        boot_timeout_secs: 300,
    };
    match cli.what {
        What::Critest {
            critest,
            images,
            upstream_hosts,
            out,
            benchmark,
            extra_args,
        } => {
            let run = husk_cri_tests::critest::Critest {
                binary: critest,
                images,
                upstream_hosts,
                out,
                benchmark,
                extra_args,
            };
            husk_cri_tests::critest::run(setup, &cli.registry, &run).await
        }
        what => {
            let (_registry, inputs) =
                with_test_images(setup, &cli.registry, &cli.busybox, &cli.work).await?;
            match what {
                What::Suite => suite::run(&inputs).await,
                What::Bench { pods, concurrency } => {
                    husk_cri_tests::bench::run(&inputs, pods, concurrency).await
                }
                What::Demo => husk_cri_tests::demo::run(&inputs).await,
                What::Critest { .. } => unreachable!("critest brings its own images"),
            }
        }
    }
}

/// The suite's, the benchmark's and the demo's inputs: a local registry
/// with the busybox test images (serving while the registry is kept).
async fn with_test_images(
    setup: DaemonSetup,
    registry_binary: &std::path::Path,
    busybox: &std::path::Path,
    work: &std::path::Path,
) -> anyhow::Result<(husk_tests::registry::TestRegistry, Inputs)> {
    let registry =
        husk_tests::registry::TestRegistry::start_with(registry_binary, &work.join("registry"))
            .context("cannot start the local registry")?;
    let pushed = husk_tests::registry::push_test_images(registry.addr(), busybox)
        .await
        .context("cannot push the test images")?;
    let inputs = Inputs {
        daemon: DaemonSetup {
            insecure_registries: vec![registry.addr().to_string()],
            ..setup
        },
        images: TestImageRefs {
            multi: pushed.multi.reference.clone(),
            index: pushed.index.reference.clone(),
            single: pushed.single.reference.clone(),
        },
        logs: work.join("logs"),
    };
    Ok((registry, inputs))
}
