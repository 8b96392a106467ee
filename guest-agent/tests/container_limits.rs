//! cgroup limits, OOM kills, stats and updates. On this development host
//! the agent drives cgroup v1 (it says so loudly); in a husk microVM the
//! same requests become cgroup v2 files.

mod harness;

use harness::{sleeper, spec, with_script, TestAgent};
use husk_agent_client::{CgroupSample, CgroupVersion, ExitReason};
use husk_proto::agent::v1 as pb;
use oci_spec::runtime::{LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};
use serde_json::json;
use tonic::Code;

const MIB: u64 = 1024 * 1024;

fn unified() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The kernel file `name` of the cgroup `pid` is in, for `controller`.
fn cgroup_file(pid: u32, controller: &str, name: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (mount, path) = if unified() {
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        ("/sys/fs/cgroup".to_string(), path.to_string())
    } else {
        let path = cgroups
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_string())
            })
            .unwrap();
        (format!("/sys/fs/cgroup/{controller}"), path)
    };
    std::fs::read_to_string(format!("{mount}{path}/{name}"))
        .unwrap()
        .trim()
        .to_string()
}

async fn stats(agent: &TestAgent, id: &str) -> CgroupSample {
    agent
        .client
        .container_stats(id)
        .await
        .expect("ContainerStats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_applied_reported_and_updated() {
    let agent = TestAgent::start("limits").await;
    let mut s = sleeper();
    s["linux"]["resources"] = json!({
        "memory": {"limit": 64 * MIB},
        "cpu": {"quota": 50000, "period": 100000, "shares": 512},
        "pids": {"limit": 20}
    });
    let pid = agent.create("lim", &s).await.unwrap();
    agent.start_container("lim").await.unwrap();
    if unified() {
        assert_eq!(cgroup_file(pid, "cpu", "cpu.max"), "50000 100000");
        assert_eq!(
            cgroup_file(pid, "memory", "memory.max"),
            (64 * MIB).to_string()
        );
    } else {
        assert_eq!(cgroup_file(pid, "cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(cgroup_file(pid, "cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(cgroup_file(pid, "cpu", "cpu.shares"), "512");
        assert_eq!(
            cgroup_file(pid, "memory", "memory.limit_in_bytes"),
            (64 * MIB).to_string()
        );
    }
    assert_eq!(cgroup_file(pid, "pids", "pids.max"), "20");

    let st = stats(&agent, "lim").await;
    assert_eq!(st.stats.memory_limit_bytes, 64 * MIB);
    assert_eq!(st.stats.pids_limit, 20);
    assert_eq!(st.stats.pids_current, 1, "{st:?}");
    assert!(st.stats.memory_usage_bytes > 0, "{st:?}");
    let (version, legacy) = if unified() {
        (CgroupVersion::V2, "v2")
    } else {
        (CgroupVersion::V1, "v1")
    };
    assert_eq!(st.version, version);
    assert_eq!(st.stats.cgroup_version, legacy);

    let update = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(96 * MIB as i64)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(30).build().unwrap())
        .build()
        .unwrap();
    agent
        .client
        .update_container("lim", &update)
        .await
        .expect("UpdateContainer");
    let st = stats(&agent, "lim").await;
    assert_eq!(
        (st.stats.memory_limit_bytes, st.stats.pids_limit),
        (96 * MIB, 30)
    );

    // JSON the typed client could never send: the agent's own check.
    let bad = agent
        .wire()
        .await
        .update_container(pb::UpdateContainerRequest {
            container_id: "lim".into(),
            resources_json: br#"{"cpu": {"period": "soon"}}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("cpu.period"), "{bad:?}");
    let st = stats(&agent, "lim").await;
    assert_eq!(
        st.stats.memory_limit_bytes,
        96 * MIB,
        "a refused update changed the limits"
    );
    agent.delete("lim", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported_as_oomkilled() {
    let agent = TestAgent::start("oom").await;
    let mut s = spec(&[]);
    s["linux"]["resources"] = json!({"memory": {"limit": 16 * MIB, "swap": 16 * MIB}});
    // dd allocates and fills a 64 MiB block: four times the limit.
    let script = "exec dd if=/dev/zero of=/dev/null bs=64M count=1";
    let (exit, _out, err) = agent.run_to_exit("oom", &with_script(s, script)).await;
    assert_eq!(
        (exit.signal, exit.code, exit.reason),
        (9, 137, ExitReason::OomKilled),
        "stderr: {err}"
    );
    agent.assert_wire_exit("oom", &exit, "OOMKilled").await;
    agent.delete("oom", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_stops_fork_bombs() {
    let agent = TestAgent::start("pids").await;
    let mut s = spec(&[]);
    s["linux"]["resources"] = json!({"pids": {"limit": 5}});
    // busybox sh gives up at the first failed fork, as a shell should.
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & echo started $i; done";
    let (exit, out, err) = agent.sh("pids", s, script).await;
    // sh is one of the five, so at most four sleeps start.
    let started = out.lines().count();
    assert!(
        (1..=4).contains(&started),
        "{started} forks succeeded under pids.max=5: {out:?} {err:?}"
    );
    assert!(err.contains("fork"), "{err:?}");
    assert_ne!(exit.code, 0);
}
