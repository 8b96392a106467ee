//! `cargo xtask critest`: cri-tools' conformance suite against husk in the
//! rig (natively where KVM boots Linux). The images its specs pull are
//! built here from Debian packages and served in the rig under their
//! upstream names through the daemon's mirror config; the run's ginkgo
//! report comes back to `<target>/critest/` and is held against
//! `tests/critest/expected-failures.toml`: any other failure, and any
//! listed spec that now passes, fails the run. The in-rig side is
//! `husk-cri-e2e critest`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use husk_tests::artifacts::cri_e2e_command;
use husk_tests::critest::{self, State, Verdict};
use husk_tests::rig::{self, Collect, Options};
use husk_tests::{critest_images, stats};

use crate::rig::build_artifacts;
use crate::static_bin;

/// Where the critest binary comes from.
const ENV_CRITEST: &str = "HUSK_CRITEST";
/// Its default, relative to the workspace (the shared tools beside the
/// clone).
const DEFAULT_CRITEST: &str = "../shared/tools/cri-tools/critest";
/// The expected-failure list, relative to the workspace.
const EXPECTED_FAILURES: &str = "tests/critest/expected-failures.toml";

/// Paths inside the rig payload.
const RIG_CRITEST: &str = "bin/critest";
const RIG_IMAGES: &str = "critest-images";
const RIG_OUT: &str = "out/critest";
/// Host programs critest runs itself, put first on its PATH.
const RIG_TOOLS: &str = "tools";
/// util-linux's `ipcmk` (the host IPC specs make a SysV segment with it).
/// Linked against glibc only, which L1's system disk carries.
const IPCMK: &str = "/usr/bin/ipcmk";

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--ginkgo.focus`: only the matching specs (a partial run, so listed
    /// specs it does not run are not stale).
    pub focus: Option<String>,
    pub benchmark: bool,
    /// Passed through to critest.
    pub extra_args: Vec<String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `$HUSK_CRITEST`, else the shared tools' copy; a loud error naming the
/// variable when neither is there.
fn critest_binary() -> anyhow::Result<PathBuf> {
    let (path, from) = match std::env::var_os(ENV_CRITEST) {
        Some(path) => (PathBuf::from(path), format!("${ENV_CRITEST}")),
        None => (
            workspace().join(DEFAULT_CRITEST),
            format!("the default (${ENV_CRITEST} is not set)"),
        ),
    };
    if !path.is_file() {
        bail!(
            "critest NOT FOUND at {} ({from}): the conformance run cannot happen. \
             Set {ENV_CRITEST} to a critest v1.36.0 binary (cri-tools' README beside the \
             default path says how it was built)",
            path.display()
        );
    }
    Ok(path)
}

pub fn run(selection: &Selection) -> anyhow::Result<()> {
    let binary = critest_binary()?;
    let expected_text = std::fs::read_to_string(workspace().join(EXPECTED_FAILURES))
        .with_context(|| format!("cannot read {EXPECTED_FAILURES}"))?;
    let expected = critest::parse_expected(&expected_text)
        .with_context(|| format!("in {EXPECTED_FAILURES}"))?;
    husk_tests::debian::ensure_installed(&["util-linux"])?;
    let artifacts = build_artifacts()?;
    eprintln!("husk: building the critest images");
    let images = critest_images::build()?;
    let payload = artifacts
        .cri_payload()?
        .file(&binary, RIG_CRITEST)
        .file(IPCMK, format!("{RIG_TOOLS}/ipcmk"))
        .dir(&images.storage, RIG_IMAGES)?;
    let report_dir = static_bin::target_dir()?.join("critest");
    let options = Options {
        timeout: Duration::from_secs(90 * 60),
        memory_mib: 6144,
        echo: true,
        collect: Some(Collect {
            from: RIG_OUT.into(),
            to: report_dir.clone(),
        }),
        ..Default::default()
    };
    let run = rig::run(&payload, &command(selection), &options)?;
    eprintln!(
        "husk: critest rig run: {:?} mode, exit status {}, total {} s; reports in {}",
        run.mode,
        run.exit_code,
        run.total.as_secs(),
        report_dir.display()
    );
    if !run.success() {
        bail!(
            "the critest run failed before judging any spec (status {}); output above, \
             daemon log in {}",
            run.exit_code,
            report_dir.join("husk.log").display()
        );
    }
    let report = report_dir.join("report.json");
    let json = std::fs::read_to_string(&report)
        .with_context(|| format!("cannot read {}", report.display()))?;
    let results = critest::parse_report(&json)?;
    if selection.benchmark {
        return print_benchmarks(&report_dir.join("benchmark"), &results);
    }
    let verdict = Verdict::new(&results, &expected);
    print_verdict(&verdict);
    let full_run = selection.focus.is_none() && selection.extra_args.is_empty();
    if !verdict.is_pass(full_run) {
        bail!(
            "critest does not match {EXPECTED_FAILURES} (report: {}, daemon log: {})",
            report.display(),
            report_dir.join("husk.log").display()
        );
    }
    Ok(())
}

/// The rig command line.
fn command(selection: &Selection) -> String {
    let mut args = format!(
        "critest --critest \"$HUSK_RIG_DIR/{RIG_CRITEST}\" --images \"$HUSK_RIG_DIR/{RIG_IMAGES}\" \
         --out \"$HUSK_RIG_DIR/{RIG_OUT}\""
    );
    for host in critest_images::UPSTREAM_HOSTS {
        args.push_str(&format!(" --upstream {host}"));
    }
    if selection.benchmark {
        args.push_str(" --benchmark");
    }
    let mut extra = Vec::new();
    if let Some(focus) = &selection.focus {
        extra.push(format!("--ginkgo.focus={focus}"));
    }
    extra.extend(selection.extra_args.iter().cloned());
    if !extra.is_empty() {
        args.push_str(" --");
        for arg in extra {
            args.push(' ');
            args.push_str(&shell_quote(&arg));
        }
    }
    format!(
        "PATH=\"$HUSK_RIG_DIR/{RIG_TOOLS}:$PATH\" {}",
        cri_e2e_command(&args)
    )
}

/// `'...'` with embedded quotes escaped, for the rig's `sh`.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

fn print_verdict(verdict: &Verdict) {
    for spec in &verdict.unexpected_failures {
        let state = match &spec.state {
            State::Failed(state) => state.as_str(),
            _ => "failed",
        };
        println!("critest UNEXPECTED {state}: {}", spec.name);
        for line in spec.message.lines().take(12) {
            println!("    {line}");
        }
    }
    for entry in &verdict.now_passing {
        println!(
            "critest NOW PASSING (remove it from {EXPECTED_FAILURES}): {}",
            entry.name
        );
    }
    for entry in &verdict.unknown {
        println!(
            "critest LISTED BUT NOT IN THE REPORT (renamed upstream?): {}",
            entry.name
        );
    }
    println!("{}", verdict.summary());
}

/// `critest-bench <file> <operation> median_ms=.. p95_ms=.. samples=..`
/// for every results file critest wrote.
fn print_benchmarks(dir: &Path, results: &[critest::SpecResult]) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("no benchmark results in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("critest wrote no benchmark results into {}", dir.display());
    }
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let name = file.file_stem().unwrap_or_default().to_string_lossy();
        for op in critest::parse_benchmark(&text).with_context(|| file.display().to_string())? {
            let (Some(median), Some(p95)) = (
                stats::median(&op.samples_ms),
                stats::percentile(&op.samples_ms, 95.0),
            ) else {
                println!("critest-bench {name} {:?} no samples", op.operation);
                continue;
            };
            println!(
                "critest-bench {name} {:?} median_ms={median:.1} p95_ms={p95:.1} samples={}",
                op.operation,
                op.samples_ms.len()
            );
        }
    }
    for spec in results
        .iter()
        .filter(|r| matches!(r.state, State::Failed(_)))
    {
        let first = spec.message.lines().next().unwrap_or_default();
        println!("critest-bench FAILED {}: {first}", spec.name);
    }
    let verdict = Verdict::new(results, &[]);
    println!("{}", verdict.summary());
    if verdict.failed > 0 {
        // critest's benchmarks also assert wall-clock bounds (e.g. a pod
        // created within seconds), which the emulated rig can miss: the
        // figures above stand, the run still says it failed.
        bail!("{} benchmark specs failed", verdict.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focus_and_extra_flags_reach_critest_quoted() {
        let line = command(&Selection {
            focus: Some("Image Manager|it's".into()),
            benchmark: false,
            extra_args: vec!["--websocket-exec".into()],
        });
        assert!(
            line.contains(" -- '--ginkgo.focus=Image Manager|it'\\''s' '--websocket-exec'"),
            "{line}"
        );
        assert!(line.contains("--upstream registry.k8s.io"), "{line}");
        assert!(!line.contains("--benchmark"));
    }

    #[test]
    fn the_repository_list_parses_and_names_reasons() {
        let text = std::fs::read_to_string(workspace().join(EXPECTED_FAILURES)).unwrap();
        critest::parse_expected(&text).unwrap();
    }
}
