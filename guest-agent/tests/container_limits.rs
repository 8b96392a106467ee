//! cgroup limits, OOM kills, stats and updates. On this development host
//! the agent drives cgroup v1 (it says so loudly); in a husk microVM the
//! same requests become cgroup v2 files.

mod harness;

use harness::{sleeper, spec, TestAgent};
use husk_proto::agent::v1 as pb;
use serde_json::json;

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

async fn stats(agent: &TestAgent, id: &str) -> pb::CgroupStats {
    agent
        .client
        .clone()
        .container_stats(pb::ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats")
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
    assert_eq!(st.memory_limit_bytes, 64 * MIB);
    assert_eq!(st.pids_limit, 20);
    assert_eq!(st.pids_current, 1, "{st:?}");
    assert!(st.memory_usage_bytes > 0, "{st:?}");
    assert_eq!(st.cgroup_version, if unified() { "v2" } else { "v1" });

    let update = json!({"memory": {"limit": 96 * MIB}, "pids": {"limit": 30}});
    agent
        .client
        .clone()
        .update_container(pb::UpdateContainerRequest {
            container_id: "lim".into(),
            resources_json: serde_json::to_vec(&update).unwrap(),
        })
        .await
        .expect("UpdateContainer");
    let st = stats(&agent, "lim").await;
    assert_eq!((st.memory_limit_bytes, st.pids_limit), (96 * MIB, 30));

    let bad = agent
        .client
        .clone()
        .update_container(pb::UpdateContainerRequest {
            container_id: "lim".into(),
            resources_json: br#"{"cpu": {"period": "soon"}}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("cpu.period"), "{bad:?}");
    let st = stats(&agent, "lim").await;
    assert_eq!(
        st.memory_limit_bytes,
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
    let (status, _out, err) = agent
        .sh("oom", s, "exec dd if=/dev/zero of=/dev/null bs=64M count=1")
        .await;
    assert_eq!(
        (status.signal, status.exit_code, status.reason.as_str()),
        (9, 137, "OOMKilled"),
        "stderr: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_stops_fork_bombs() {
    let agent = TestAgent::start("pids").await;
    let mut s = spec(&[]);
    s["linux"]["resources"] = json!({"pids": {"limit": 5}});
    // busybox sh gives up at the first failed fork, as a shell should.
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & echo started $i; done";
    let (status, out, err) = agent.sh("pids", s, script).await;
    // sh is one of the five, so at most four sleeps start.
    let started = out.lines().count();
    assert!(
        (1..=4).contains(&started),
        "{started} forks succeeded under pids.max=5: {out:?} {err:?}"
    );
    assert!(err.contains("fork"), "{err:?}");
    assert_ne!(status.exit_code, 0);
}
