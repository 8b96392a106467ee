//! cri-tools' conformance suite, `critest`, against the husk daemon where
//! KVM boots Linux. The images its specs pull are built on the outer host
//! (`husk_tests::critest_images`) and arrive as a registry's storage; a
//! local registry serves them and the daemon reaches it through its mirror
//! config under the images' upstream names, as an air-gapped node would.
//! critest's reports land in a folder the caller collects; judging them
//! against the expected-failure list is the caller's business.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use husk_tests::registry::TestRegistry;

use crate::daemon::{Daemon, DaemonSetup};

/// What to run.
#[derive(Debug, Clone)]
pub struct Critest {
    pub binary: PathBuf,
    /// A docker-registry storage holding every image the specs pull.
    pub images: PathBuf,
    /// Registry hosts whose images the local registry mirrors.
    pub upstream_hosts: Vec<String>,
    /// Reports and the daemon's log go here.
    pub out: PathBuf,
    /// Run the benchmarks instead of the conformance specs.
    pub benchmark: bool,
    /// Passed through to critest (after ours, so they can override).
    pub extra_args: Vec<String>,
}

/// File names under [`Critest::out`].
pub const JSON_REPORT: &str = "report.json";
pub const JUNIT_REPORT: &str = "junit.xml";
pub const DAEMON_LOG: &str = "husk.log";
pub const BENCHMARK_DIR: &str = "benchmark";
pub const BENCHMARK_PARAMS: &str = "benchmark-params.yaml";

/// Benchmark parameters: lifecycles of containers and pods, serial and
/// a few at a time, and image pulls, sized for the nested rig.
const BENCHMARK_PARAMS_YAML: &str = "\
containersNumber: 10
containersNumberParallel: 2
containerBenchmarkTimeoutSeconds: 900
podsNumber: 10
podsNumberParallel: 2
podBenchmarkTimeoutSeconds: 900
imagesNumber: 5
imagesNumberParallel: 1
imageBenchmarkTimeoutSeconds: 600
imagePullingBenchmarkImage: registry.k8s.io/e2e-test-images/busybox:1.29-2
";

/// Starts the registry and the daemon, runs critest to the end and keeps
/// its reports. critest's own failure (specs failing) is not an error
/// here; a run that wrote no report is.
pub async fn run(
    mut setup: DaemonSetup,
    registry_binary: &Path,
    critest: &Critest,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&critest.out)?;
    let registry = TestRegistry::start_with(registry_binary, &critest.images)
        .context("cannot serve the critest images")?;
    setup.mirrors = critest
        .upstream_hosts
        .iter()
        .map(|host| (host.clone(), registry.url()))
        .collect();
    let (mut daemon, _cri) = Daemon::start(setup).await?;
    let endpoint = format!("unix://{}", daemon.setup.socket().display());
    let mut command = Command::new(&critest.binary);
    command
        .arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=80m")
        .arg(format!(
            "--ginkgo.json-report={}",
            critest.out.join(JSON_REPORT).display()
        ))
        .arg(format!(
            "--ginkgo.junit-report={}",
            critest.out.join(JUNIT_REPORT).display()
        ));
    if critest.benchmark {
        let params = critest.out.join(BENCHMARK_PARAMS);
        std::fs::write(&params, BENCHMARK_PARAMS_YAML)?;
        let results = critest.out.join(BENCHMARK_DIR);
        std::fs::create_dir_all(&results)?;
        command
            .arg("-benchmark")
            .arg(format!("--benchmarking-params-file={}", params.display()))
            .arg(format!("--benchmarking-output-dir={}", results.display()));
    }
    command
        .args(&critest.extra_args)
        .current_dir(&critest.out)
        .stdin(Stdio::null());
    eprintln!("critest: running {command:?}");
    let status = tokio::task::spawn_blocking(move || command.status())
        .await?
        .with_context(|| format!("cannot run {}", critest.binary.display()))?;
    eprintln!("critest: critest ended: {status}");
    let stopped_cleanly = daemon.stop();
    let _ = std::fs::copy(daemon.setup.log_path(), critest.out.join(DAEMON_LOG));
    drop(registry);
    if !critest.out.join(JSON_REPORT).is_file() {
        bail!("critest ended ({status}) without writing its report");
    }
    if !stopped_cleanly {
        bail!("the daemon did not stop within its grace period after critest");
    }
    Ok(())
}
