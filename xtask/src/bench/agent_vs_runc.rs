//! `cargo xtask bench agent`: containers and execs through husk-agent on
//! this host against Debian's runc on the same busybox bundle. The two
//! runtimes' drivers ([`super::agent`], [`super::runc`]) know nothing of
//! each other; this module times them side by side.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use husk_tests::{busybox, debian, stats};

use super::agent::Agent;
use super::runc::Runc;
use super::workload::{LAYER, SLEEPER};
use crate::static_bin::{self, Profile};

/// Runs the busybox container `runs` times under husk-agent (an ordinary
/// root process on this host, talking gRPC over a unix socket) and runc
/// alternately, then execs into one running container of each the same
/// way. Prints `<agent|runc> <create_start|exec> median_ms=.. p95_ms=..
/// runs=..` lines, then `ratio agent/runc create_start=.. exec=..`.
pub fn agent(runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    debian::ensure_installed(&["runc", "busybox-static"])?;
    // The static build is the binary the guest runs (and `cargo xtask
    // guest` reuses it).
    let agent_bin = static_bin::build("husk-agent", "husk-agent", Profile::Guest)?;
    let scratch = std::env::temp_dir().join(format!("husk-bench-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let figures = agent_vs_runc(&agent_bin, &scratch, runs)
        .with_context(|| format!("bench agent failed; its files are in {}", scratch.display()))?;
    remove_scratch(&scratch);
    for line in agent_report(&figures)? {
        println!("{line}");
    }
    Ok(())
}

/// Milliseconds per run of one operation, agent's and runc's.
#[derive(Debug, Default)]
struct Samples {
    agent: Vec<f64>,
    runc: Vec<f64>,
}

/// Everything `bench agent` measures.
#[derive(Debug)]
struct AgentFigures {
    create_start: Samples,
    exec: Samples,
}

/// Sets up both runtimes in `scratch` and measures them.
fn agent_vs_runc(agent_bin: &Path, scratch: &Path, runs: usize) -> anyhow::Result<AgentFigures> {
    let layers = scratch.join("layers");
    let layer = layers.join(LAYER);
    busybox::build_layer(&layer)?;
    let runc = Runc::new(scratch, &layer)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agent = Agent::start(agent_bin, scratch, &layers, &runtime)?;
    let create_start = alternate(
        runs,
        |i| agent.create_start(&format!("run-{i}")),
        |i| runc.create_start(&format!("run-{i}")),
    )?;
    let exec = exec_samples(&agent, &runc, runs)?;
    Ok(AgentFigures { create_start, exec })
}

/// Times `agent(i)` then `runc(i)` for each run, so both see the same
/// noise; the first failure ends the benchmark.
fn alternate(
    runs: usize,
    mut agent: impl FnMut(usize) -> anyhow::Result<()>,
    mut runc: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for i in 0..runs {
        samples.agent.push(time_ms(|| agent(i)).context("agent")?);
        samples.runc.push(time_ms(|| runc(i)).context("runc")?);
    }
    Ok(samples)
}

/// How long `f` took, in milliseconds, if it succeeded.
fn time_ms(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// Execs `runs` times into a running [`SLEEPER`] container of each
/// runtime, which exists only for this and is removed whatever happens.
fn exec_samples(agent: &Agent, runc: &Runc, runs: usize) -> anyhow::Result<Samples> {
    agent.start_sleeper()?;
    let measured = runc.start_sleeper().and_then(|()| {
        let samples = alternate(runs, |i| agent.exec(&format!("exec-{i}")), |_| runc.exec());
        let removed = runc.delete(SLEEPER);
        let samples = samples?;
        removed.map(|()| samples)
    });
    let removed = agent.delete(SLEEPER);
    let samples = measured?;
    removed.map(|()| samples)
}

/// The benchmark's output lines.
fn agent_report(figures: &AgentFigures) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut medians = Vec::new();
    for (op, samples) in [
        ("create_start", &figures.create_start),
        ("exec", &figures.exec),
    ] {
        for (runtime, ms) in [("agent", &samples.agent), ("runc", &samples.runc)] {
            let median = stats::median(ms).with_context(|| format!("no {runtime} {op} samples"))?;
            let p95 = stats::percentile(ms, 95.0).context("no samples")?;
            lines.push(format!(
                "{runtime} {op} median_ms={median:.2} p95_ms={p95:.2} runs={}",
                ms.len()
            ));
            medians.push(median);
        }
    }
    let [cs_agent, cs_runc, exec_agent, exec_runc] = medians[..] else {
        unreachable!("two operations by two runtimes");
    };
    lines.push(format!(
        "ratio agent/runc create_start={:.2} exec={:.2}",
        cs_agent / cs_runc,
        exec_agent / exec_runc
    ));
    Ok(lines)
}

/// Removes the benchmark's files, unless something is still mounted under
/// them: deleting through a leftover mount could reach files outside.
fn remove_scratch(scratch: &Path) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left = mounts_under(&mounts, scratch);
    if !left.is_empty() {
        eprintln!(
            "husk: kept {} because these are still mounted: {}",
            scratch.display(),
            left.join(" ")
        );
        return;
    }
    if let Err(e) = fs::remove_dir_all(scratch) {
        eprintln!("husk: cannot remove {}: {e}", scratch.display());
    }
}

/// Mount points in `mountinfo` (proc(5) format) at or under `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use anyhow::ensure;

    use super::*;

    #[test]
    fn alternate_interleaves_runs_and_stops_at_the_first_failure() {
        let calls = std::cell::RefCell::new(Vec::new());
        let record = |who: &str, i: usize| {
            calls.borrow_mut().push(format!("{who}{i}"));
            Ok(())
        };
        let samples = alternate(2, |i| record("agent", i), |i| record("runc", i)).unwrap();
        assert_eq!(*calls.borrow(), ["agent0", "runc0", "agent1", "runc1"]);
        assert_eq!((samples.agent.len(), samples.runc.len()), (2, 2));

        let err = alternate(
            3,
            |_| Ok(()),
            |i| {
                ensure!(i < 1, "boom");
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(format!("{err:#}"), "runc: boom");
    }

    #[test]
    fn agent_report_prints_medians_p95_and_ratios() {
        let figures = AgentFigures {
            create_start: Samples {
                agent: vec![10.0, 30.0, 20.0],
                runc: vec![40.0, 40.0, 100.0],
            },
            exec: Samples {
                agent: vec![1.0, 3.0],
                runc: vec![4.0, 4.0],
            },
        };
        assert_eq!(
            agent_report(&figures).unwrap(),
            [
                "agent create_start median_ms=20.00 p95_ms=30.00 runs=3",
                "runc create_start median_ms=40.00 p95_ms=100.00 runs=3",
                "agent exec median_ms=2.00 p95_ms=3.00 runs=2",
                "runc exec median_ms=4.00 p95_ms=4.00 runs=2",
                "ratio agent/runc create_start=0.50 exec=0.50",
            ]
        );
        let empty = AgentFigures {
            create_start: Samples::default(),
            exec: Samples::default(),
        };
        assert!(agent_report(&empty).is_err());
    }

    #[test]
    fn finds_mounts_left_under_a_folder() {
        let mountinfo = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                         90 22 0:50 / /tmp/b/agent-state/c/rootfs rw - overlay overlay rw\n\
                         91 22 0:51 / /tmp/bb rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mounts_under(mountinfo, Path::new("/tmp/b")),
            ["/tmp/b/agent-state/c/rootfs"]
        );
        assert!(mounts_under(mountinfo, Path::new("/tmp/c")).is_empty());
    }
}
