//! critest's results against the repository's list of specs expected to
//! fail: the per-spec outcome comes from ginkgo's JSON report, the list
//! from `tests/critest/expected-failures.toml`. A run passes when exactly
//! the listed specs fail, so the list can only shrink: an unlisted failure
//! fails the run, and so does a listed spec that now passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// One spec's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecResult {
    /// The container texts and the spec's own text, space-separated: what
    /// `--ginkgo.focus` matches and what the expected-failure list names.
    pub name: String,
    pub state: State,
    /// The failure message (empty unless failed).
    pub message: String,
    pub runtime: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Passed,
    /// Failed, panicked, timed out, interrupted or aborted: ginkgo's
    /// state is kept for the report.
    Failed(String),
    /// Skipped (by the spec itself or by a focus) or pending.
    Skipped,
}

/// The part of ginkgo v2's JSON report read here.
#[derive(Deserialize)]
struct Report {
    #[serde(rename = "SpecReports", default)]
    spec_reports: Vec<SpecReport>,
}

#[derive(Deserialize)]
struct SpecReport {
    #[serde(rename = "ContainerHierarchyTexts", default)]
    containers: Option<Vec<String>>,
    #[serde(rename = "LeafNodeType", default)]
    leaf_type: String,
    #[serde(rename = "LeafNodeText", default)]
    leaf_text: String,
    #[serde(rename = "State")]
    state: String,
    #[serde(rename = "RunTime", default)]
    runtime_ns: u64,
    #[serde(rename = "Failure", default)]
    failure: Option<Failure>,
}

#[derive(Deserialize)]
struct Failure {
    #[serde(rename = "Message", default)]
    message: String,
}

/// Every spec in a ginkgo JSON report (`--ginkgo.json-report`), plus any
/// suite-level node that failed (a failed BeforeSuite fails every spec
/// without running it, so it must not pass unnoticed).
pub fn parse_report(json: &str) -> anyhow::Result<Vec<SpecResult>> {
    let reports: Vec<Report> =
        serde_json::from_str(json).context("not a ginkgo JSON report (an array of suites)")?;
    let mut specs = Vec::new();
    for spec in reports.into_iter().flat_map(|r| r.spec_reports) {
        let state = match spec.state.as_str() {
            "passed" => State::Passed,
            "skipped" | "pending" => State::Skipped,
            other => State::Failed(other.to_string()),
        };
        let is_spec = spec.leaf_type == "It";
        if !is_spec && !matches!(state, State::Failed(_)) {
            continue;
        }
        let mut parts = spec.containers.unwrap_or_default();
        parts.push(if is_spec {
            spec.leaf_text
        } else {
            format!("[{}] {}", spec.leaf_type, spec.leaf_text)
        });
        let name = parts
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        specs.push(SpecResult {
            name,
            state,
            message: spec.failure.map(|f| f.message).unwrap_or_default(),
            runtime: Duration::from_nanos(spec.runtime_ns),
        });
    }
    Ok(specs)
}

/// One entry of the expected-failure list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailure {
    /// The spec's full name as [`SpecResult::name`] gives it.
    pub name: String,
    /// Why it fails on husk, and what would make it pass.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFile {
    #[serde(default)]
    spec: Vec<ExpectedFailure>,
}

/// Parses the expected-failure list: `[[spec]]` tables with `name` and a
/// non-empty `reason`, each name once.
pub fn parse_expected(text: &str) -> anyhow::Result<Vec<ExpectedFailure>> {
    let file: ExpectedFile = toml::from_str(text).context("expected-failure list")?;
    let mut seen = BTreeSet::new();
    for entry in &file.spec {
        if entry.reason.trim().is_empty() {
            bail!("expected failure {:?} gives no reason", entry.name);
        }
        if !seen.insert(entry.name.as_str()) {
            bail!("expected failure {:?} is listed twice", entry.name);
        }
    }
    Ok(file.spec)
}

/// A run's results held against the expected-failure list.
#[derive(Debug, Default)]
pub struct Verdict {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Failed and not listed.
    pub unexpected_failures: Vec<SpecResult>,
    /// Listed, and passed: the entry must go.
    pub now_passing: Vec<ExpectedFailure>,
    /// Listed, and absent from the report (renamed or removed upstream).
    /// Only meaningful for a run of every spec.
    pub unknown: Vec<ExpectedFailure>,
    /// Listed and failed as expected.
    pub expected_failures: usize,
}

impl Verdict {
    /// Compares `results` with `expected`. A listed spec that was skipped
    /// (by a focus, or because the runtime lacks a feature) says nothing
    /// either way.
    pub fn new(results: &[SpecResult], expected: &[ExpectedFailure]) -> Verdict {
        let by_name: BTreeMap<&str, &SpecResult> =
            results.iter().map(|r| (r.name.as_str(), r)).collect();
        let listed: BTreeSet<&str> = expected.iter().map(|e| e.name.as_str()).collect();
        let mut verdict = Verdict::default();
        for result in results {
            match &result.state {
                State::Passed => verdict.passed += 1,
                State::Skipped => verdict.skipped += 1,
                State::Failed(_) => {
                    verdict.failed += 1;
                    if listed.contains(result.name.as_str()) {
                        verdict.expected_failures += 1;
                    } else {
                        verdict.unexpected_failures.push(result.clone());
                    }
                }
            }
        }
        for entry in expected {
            match by_name.get(entry.name.as_str()).map(|r| &r.state) {
                Some(State::Passed) => verdict.now_passing.push(entry.clone()),
                None => verdict.unknown.push(entry.clone()),
                _ => {}
            }
        }
        verdict
    }

    /// The `critest passed=.. failed=.. skipped=..` line.
    pub fn summary(&self) -> String {
        format!(
            "critest passed={} failed={} skipped={} expected_failures={} unexpected_failures={} now_passing={}",
            self.passed,
            self.failed,
            self.skipped,
            self.expected_failures,
            self.unexpected_failures.len(),
            self.now_passing.len()
        )
    }

    /// True when the run matches the list; `full_run` also requires every
    /// listed spec to exist.
    pub fn is_pass(&self, full_run: bool) -> bool {
        self.unexpected_failures.is_empty()
            && self.now_passing.is_empty()
            && (!full_run || self.unknown.is_empty())
    }
}

/// One operation's timings in a critest benchmark result file.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationTimes {
    pub operation: String,
    /// Milliseconds, one per sample.
    pub samples_ms: Vec<f64>,
}

#[derive(Deserialize)]
struct LifecycleResults {
    #[serde(rename = "operationsNames")]
    operations: Vec<String>,
    #[serde(default)]
    datapoints: Vec<Datapoint>,
}

#[derive(Deserialize)]
struct Datapoint {
    #[serde(rename = "operationsDurationsNs", default)]
    durations_ns: Vec<i64>,
}

/// The per-operation samples of one benchmark results file (critest's
/// lifecycle results: operation names, then one duration per operation
/// for each sample). A sample with the wrong number of durations (critest
/// warns about them) is left out rather than shifted onto other names.
pub fn parse_benchmark(json: &str) -> anyhow::Result<Vec<OperationTimes>> {
    let results: LifecycleResults =
        serde_json::from_str(json).context("not a critest benchmark results file")?;
    let mut times: Vec<OperationTimes> = results
        .operations
        .iter()
        .map(|operation| OperationTimes {
            operation: operation.clone(),
            samples_ms: Vec::new(),
        })
        .collect();
    let operations = times.len();
    for point in results
        .datapoints
        .iter()
        .filter(|p| p.durations_ns.len() == operations)
    {
        for (slot, ns) in times.iter_mut().zip(&point.durations_ns) {
            slot.samples_ms.push(*ns as f64 / 1e6);
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(specs: &[(&[&str], &str, &str, &str)]) -> String {
        let specs: Vec<serde_json::Value> = specs
            .iter()
            .map(|(containers, leaf_type, text, state)| {
                serde_json::json!({
                    "ContainerHierarchyTexts": containers,
                    "LeafNodeType": leaf_type,
                    "LeafNodeText": text,
                    "State": state,
                    "RunTime": 1_500_000_000u64,
                    "Failure": {"Message": format!("{text} broke")},
                })
            })
            .collect();
        serde_json::json!([{"SuitePath": "/x", "SpecReports": specs}]).to_string()
    }

    #[test]
    fn specs_are_named_by_their_containers_and_text() {
        let json = report(&[
            (
                &["[sig-node] Image Manager", ""],
                "It",
                "public image",
                "passed",
            ),
            (&["[sig-node] Pod"], "It", "should stop", "timedout"),
            (&[], "BeforeSuite", "", "passed"),
            (&[], "SynchronizedBeforeSuite", "", "failed"),
            (&["[sig-node] Streaming"], "It", "exec", "skipped"),
        ]);
        let specs = parse_report(&json).unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "[sig-node] Image Manager public image",
                "[sig-node] Pod should stop",
                "[SynchronizedBeforeSuite]",
                "[sig-node] Streaming exec",
            ]
        );
        assert_eq!(specs[0].state, State::Passed);
        assert_eq!(specs[1].state, State::Failed("timedout".into()));
        assert_eq!(specs[1].message, "should stop broke");
        assert_eq!(specs[1].runtime, Duration::from_millis(1500));
        assert_eq!(specs[3].state, State::Skipped);
    }

    #[test]
    fn a_report_that_is_not_one_is_refused() {
        assert!(parse_report("{}").is_err());
        assert!(parse_report("[{\"SpecReports\": [{\"LeafNodeType\": \"It\"}]}]").is_err());
    }

    #[test]
    fn the_list_needs_reasons_and_unique_names() {
        let ok = "[[spec]]\nname = \"a\"\nreason = \"no network\"\n";
        assert_eq!(parse_expected(ok).unwrap().len(), 1);
        assert!(parse_expected("[[spec]]\nname = \"a\"\nreason = \" \"\n").is_err());
        assert!(parse_expected(&format!("{ok}{ok}")).is_err());
        assert!(parse_expected("[[spec]]\nname = \"a\"\nreason = \"r\"\nissue = 1\n").is_err());
        assert!(parse_expected("").unwrap().is_empty());
    }

    fn result(name: &str, state: State) -> SpecResult {
        SpecResult {
            name: name.into(),
            state,
            message: String::new(),
            runtime: Duration::ZERO,
        }
    }

    fn expected(name: &str) -> ExpectedFailure {
        ExpectedFailure {
            name: name.into(),
            reason: "r".into(),
        }
    }

    #[test]
    fn benchmark_samples_are_split_by_operation() {
        let json = r#"{"operationsNames": ["create", "start"], "numParallel": 1,
            "datapoints": [
              {"sampleIndex": 0, "operationsDurationsNs": [2000000, 5000000]},
              {"sampleIndex": 1, "operationsDurationsNs": [3000000]},
              {"sampleIndex": 2, "operationsDurationsNs": [4000000, 7000000]}]}"#;
        let times = parse_benchmark(json).unwrap();
        assert_eq!(times.len(), 2);
        assert_eq!(times[0].operation, "create");
        assert_eq!(times[0].samples_ms, [2.0, 4.0]);
        assert_eq!(times[1].samples_ms, [5.0, 7.0]);
        assert!(parse_benchmark("[]").is_err());
    }

    #[test]
    fn only_the_listed_failures_pass() {
        let failed = || State::Failed("failed".into());
        let results = [
            result("ok", State::Passed),
            result("listed", failed()),
            result("skipped listed", State::Skipped),
        ];
        let list = [expected("listed"), expected("skipped listed")];
        let verdict = Verdict::new(&results, &list);
        assert!(verdict.is_pass(true), "{verdict:?}");
        assert_eq!(
            verdict.summary(),
            "critest passed=1 failed=1 skipped=1 expected_failures=1 unexpected_failures=0 now_passing=0"
        );

        let results = [result("ok", failed()), result("listed", failed())];
        let verdict = Verdict::new(&results, &list[..1]);
        assert!(!verdict.is_pass(false));
        assert_eq!(verdict.unexpected_failures[0].name, "ok");

        let results = [result("listed", State::Passed)];
        let verdict = Verdict::new(&results, &list[..1]);
        assert!(!verdict.is_pass(false), "a fixed spec must leave the list");
        assert_eq!(verdict.now_passing, [expected("listed")]);

        let verdict = Verdict::new(&[], &[expected("renamed")]);
        assert!(verdict.is_pass(false));
        assert!(!verdict.is_pass(true), "a stale entry fails a full run");
    }
}
