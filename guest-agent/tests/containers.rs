//! Container lifecycle and processes through the agent API, for real on
//! this machine (root): create, start, output, exit codes and signals,
//! stdin, a terminal, concurrent execs, delete.

mod harness;

use harness::{process, sleeper, spec, with_script, TestAgent, LAYER};
use husk_agent_client::{
    AgentEvent, ContainerState, ExitReason, ProcessRef, SandboxConfig, SignalScope,
};
use oci_spec::runtime::Spec;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_create_start_output_exit_delete() {
    let agent = TestAgent::start("lifecycle").await;
    let id = "life";
    // The typed spec, as the daemon sends it: the agent must take what
    // oci-spec writes.
    let typed: Spec = serde_json::from_value(spec(&[
        "/bin/sh",
        "-c",
        "echo hello from busybox; echo oops >&2",
    ]))
    .expect("a valid OCI spec");
    let pid = agent
        .client
        .create_container(id, &typed, &[LAYER.into()], false)
        .await
        .expect("CreateContainer");
    assert!(pid > 1);
    let status = agent.status(id).await.unwrap();
    assert_eq!(status.state, ContainerState::Created);
    assert_eq!((status.id.as_str(), status.pid), (id, pid));
    assert!(agent.container_dir(id).join("upper").is_dir());

    agent.start_container(id).await.expect("StartContainer");
    let init = ProcessRef::init(id);
    let (out, err) = agent.output(&init).await;
    assert_eq!(out, "hello from busybox\n");
    assert_eq!(err, "oops\n");
    let exit = agent.wait(&init).await;
    assert_eq!((exit.code, exit.signal), (0, 0));
    assert_eq!(exit.reason, ExitReason::Completed);
    agent.assert_wire_exit(id, &exit, "Completed").await;
    let status = agent.status(id).await.unwrap();
    assert_eq!(status.state, ContainerState::Stopped);
    assert!(status.started_at_ns >= status.created_at_ns && status.created_at_ns > 0);
    assert_eq!(status.exit.unwrap().code, 0);

    // Starting twice is refused; the state is intact.
    let again = agent.start_container(id).await.unwrap_err();
    assert!(again.is_failed_precondition(), "{again:?}");

    agent.delete(id, false).await.expect("DeleteContainer");
    assert!(
        harness::gone(&agent.container_dir(id)),
        "container folder left behind"
    );
    let missing = agent.status(id).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    let list = agent.client.list_containers().await.unwrap();
    assert!(list.is_empty(), "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals() {
    let agent = TestAgent::start("exits").await;
    let (exit, _, _) = agent
        .run_to_exit("code", &with_script(spec(&[]), "exit 3"))
        .await;
    assert_eq!(
        (exit.code, exit.signal, exit.reason),
        (3, 0, ExitReason::Error)
    );
    agent.assert_wire_exit("code", &exit, "Error").await;
    agent.delete("code", false).await.unwrap();

    // A process that handles SIGTERM itself.
    let trap = "trap 'echo got TERM; exit 42' TERM; echo armed; while :; do sleep 0.05; done";
    agent
        .create("term", &with_script(spec(&[]), trap))
        .await
        .unwrap();
    agent.start_container("term").await.unwrap();
    let term = ProcessRef::init("term");
    let mut output = agent.client.read_output(&term).await.unwrap();
    let first = tokio::time::timeout(harness::TIMEOUT, output.next())
        .await
        .expect("no output in time")
        .unwrap()
        .expect("a first chunk");
    assert_eq!(first.data, b"armed\n");
    agent
        .client
        .signal(&term, libc::SIGTERM, SignalScope::Process)
        .await
        .unwrap();
    let exit = agent.wait(&term).await;
    assert_eq!((exit.code, exit.signal), (42, 0));
    agent.delete("term", false).await.unwrap();

    // SIGKILL from the host.
    agent.create("kill", &sleeper()).await.unwrap();
    agent.start_container("kill").await.unwrap();
    let running = agent.delete("kill", false).await.unwrap_err();
    assert!(running.is_failed_precondition(), "{running:?}");
    let kill = ProcessRef::init("kill");
    agent
        .client
        .signal(&kill, libc::SIGKILL, SignalScope::Process)
        .await
        .unwrap();
    let exit = agent.wait(&kill).await;
    assert_eq!(
        (exit.code, exit.signal, exit.reason),
        (137, 9, ExitReason::Signaled)
    );
    agent.assert_wire_exit("kill", &exit, "Signaled").await;
    let late = agent
        .client
        .signal(&kill, libc::SIGTERM, SignalScope::Process)
        .await
        .unwrap_err();
    assert!(late.is_failed_precondition(), "{late:?}");
    agent.delete("kill", false).await.unwrap();

    let bad = agent
        .client
        .signal(&ProcessRef::init("nope"), 15, SignalScope::Process)
        .await
        .unwrap_err();
    assert!(bad.is_not_found(), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_piped_to_the_process() {
    let agent = TestAgent::start("stdin").await;
    agent
        .create_with("cat", &spec(&["/bin/sh", "-c", "tr a-z A-Z"]), true)
        .await
        .unwrap();
    agent.start_container("cat").await.unwrap();
    let cat = ProcessRef::init("cat");
    for part in ["hello ", "through ", "stdin\n"] {
        agent
            .client
            .write_stdin(&cat, part.as_bytes())
            .await
            .unwrap();
    }
    agent.client.close_stdin(&cat).await.unwrap();
    let (out, _) = agent.output(&cat).await;
    assert_eq!(out, "HELLO THROUGH STDIN\n");
    assert_eq!(agent.wait(&cat).await.code, 0);
    agent.delete("cat", false).await.unwrap();

    // Without stdin, writing is refused.
    agent.create("nostdin", &sleeper()).await.unwrap();
    let refused = agent
        .client
        .write_stdin(&ProcessRef::init("nostdin"), b"x")
        .await
        .unwrap_err();
    assert!(refused.is_failed_precondition(), "{refused:?}");
    agent.delete("nostdin", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal() {
    let agent = TestAgent::start("tty").await;
    agent.create("box", &sleeper()).await.unwrap();
    agent.start_container("box").await.unwrap();
    let mut p = process(&["/bin/sh", "-c", "read line; tty; stty size; echo got $line"]);
    p["terminal"] = json!(true);
    agent
        .exec("box", "t1", &p, true)
        .await
        .expect("ExecProcess with a terminal");
    let t1 = ProcessRef::exec("box", "t1");
    agent
        .client
        .resize_terminal(&t1, 33, 101)
        .await
        .expect("ResizeTerminal");
    agent.client.write_stdin(&t1, b"typed\n").await.unwrap();
    let (out, err) = agent.output(&t1).await;
    // The terminal echoes input and turns \n into \r\n.
    assert!(out.contains("typed\r\n"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("33 101"), "{out:?}");
    assert!(out.contains("got typed"), "{out:?}");
    assert!(err.is_empty(), "a terminal has one output stream: {err:?}");
    assert_eq!(agent.wait(&t1).await.code, 0);

    // A process without a terminal cannot be resized.
    agent
        .exec("box", "plain", &process(&["/bin/sleep", "5"]), false)
        .await
        .unwrap();
    let refused = agent
        .client
        .resize_terminal(&ProcessRef::exec("box", "plain"), 1, 1)
        .await
        .unwrap_err();
    assert!(refused.is_failed_precondition(), "{refused:?}");
    agent.delete("box", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_execs() {
    let agent = TestAgent::start("execs").await;
    agent.create("box", &sleeper()).await.unwrap();
    agent.start_container("box").await.unwrap();
    let agent = std::sync::Arc::new(agent);
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..20 {
        let agent = agent.clone();
        runs.spawn(async move {
            let exec_id = format!("e{i}");
            let script = format!("echo exec {i} pid $$; exit {}", i % 4);
            agent
                .exec(
                    "box",
                    &exec_id,
                    &process(&["/bin/sh", "-c", &script]),
                    false,
                )
                .await
                .unwrap_or_else(|e| panic!("exec {i}: {e:?}"));
            let exec = ProcessRef::exec("box", exec_id);
            let (out, _) = agent.output(&exec).await;
            let exit = agent.wait(&exec).await;
            (i, out, exit)
        });
    }
    let mut seen = 0;
    while let Some(result) = runs.join_next().await {
        let (i, out, exit) = result.expect("exec task");
        assert!(out.starts_with(&format!("exec {i} pid ")), "{i}: {out:?}");
        assert_eq!(exit.code, i % 4, "{i}");
        seen += 1;
    }
    assert_eq!(seen, 20);

    // Two calls racing for one exec id: exactly one gets it.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let agent = agent.clone();
            tokio::spawn(async move {
                agent
                    .exec("box", "same", &process(&["/bin/sleep", "1"]), false)
                    .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for racer in racers {
        codes.push(racer.await.unwrap().map(|_| ()).map_err(|e| e.code()));
    }
    codes.sort_by_key(|c| c.is_err());
    assert_eq!(codes, [Ok(()), Err(Some(Code::AlreadyExists))], "{codes:?}");
    assert_eq!(agent.wait(&ProcessRef::exec("box", "same")).await.code, 0);
    // Waited execs are forgotten; the container is untouched.
    let status = agent.status("box").await.unwrap();
    assert!(status.exec_ids.is_empty(), "{:?}", status.exec_ids);
    assert_eq!(status.state, ContainerState::Running);
    agent.delete("box", true).await.unwrap();
    assert!(harness::gone(&agent.container_dir("box")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_exits() {
    let agent = TestAgent::start("events").await;
    let mut events = agent.client.events().await.unwrap();
    agent.sh("ev", spec(&[]), "exit 5").await;
    // The client bounds opening the stream, not waiting on it.
    let event = tokio::time::timeout(harness::TIMEOUT, events.next())
        .await
        .expect("no event in time")
        .unwrap()
        .expect("an event");
    match event {
        AgentEvent::Exited { process, exit, .. } => {
            assert_eq!(process, ProcessRef::init("ev"));
            assert_eq!((exit.code, exit.reason), (5, ExitReason::Error));
        }
        other => panic!("expected an exit event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_metrics_and_sandbox() {
    let agent = TestAgent::start("sandbox").await;
    let files = agent
        .client
        .setup_sandbox(SandboxConfig {
            hostname: "pod-a".into(),
            hosts: "127.0.0.1 localhost pod-a\n".into(),
            resolv_conf: "nameserver 10.0.0.10\n".into(),
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        })
        .await
        .expect("SetupSandbox");
    let resolv_conf = files.resolv_conf.expect("a resolv.conf path");
    let hosts = files.hosts.expect("a hosts path");
    // A container sees the sandbox's files through bind mounts and shares
    // its uts namespace when the spec has none of its own.
    let mut s = spec(&[]);
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/resolv.conf", "type": "bind", "source": resolv_conf, "options": ["rbind", "ro"]
    }));
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]
    }));
    let ns: Vec<_> = s["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "uts")
        .cloned()
        .collect();
    s["linux"]["namespaces"] = json!(ns);
    s.as_object_mut().unwrap().remove("hostname");
    let (exit, out, err) = agent
        .sh(
            "reader",
            s,
            "cat /etc/resolv.conf /etc/hosts; hostname; cat /proc/sys/net/ipv4/ip_forward",
        )
        .await;
    assert_eq!(exit.code, 0, "{err}");
    assert_eq!(
        out,
        "nameserver 10.0.0.10\n127.0.0.1 localhost pod-a\npod-a\n1\n"
    );

    let bad = agent
        .client
        .setup_sandbox(SandboxConfig {
            sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some(Code::InvalidArgument), "{bad:?}");
    assert!(
        bad.agent_message()
            .unwrap_or_default()
            .contains("kernel.panic"),
        "{bad:?}"
    );

    let metrics = agent.client.guest_metrics().await.unwrap();
    assert!(
        metrics.memory_total_bytes > 0 && metrics.processes > 0,
        "{metrics:?}"
    );
    assert_eq!(metrics.containers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_forwards_sigterm_to_containers() {
    let agent = TestAgent::start("forward").await;
    let volume = agent.shared().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let mut s = spec(&[]);
    s["process"]["args"] = json!([
        "/bin/sh",
        "-c",
        "trap 'echo got TERM > /vol/seen; exit 0' TERM; touch /vol/ready; while :; do sleep 0.05; done"
    ]);
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/vol", "type": "bind", "source": volume, "options": ["rbind", "rw"]
    }));
    agent.create("trapper", &s).await.unwrap();
    agent.start_container("trapper").await.unwrap();
    let deadline = std::time::Instant::now() + harness::TIMEOUT;
    while !volume.join("ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let cgroups_before = agent_cgroups(agent.pid());
    assert!(!cgroups_before.is_empty(), "no cgroup base for the agent");

    // SIGTERM to the agent, as a supervisor stopping it would send.
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + harness::TIMEOUT;
    while std::path::Path::new(&format!("/proc/{}", agent.pid())).exists()
        && !is_zombie(agent.pid())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_to_string(volume.join("seen")).unwrap_or_default(),
        "got TERM\n",
        "the container was not sent SIGTERM before the agent stopped"
    );
    for dir in cgroups_before {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// The agent's cgroup base folders (outside a VM: `husk-agent-<pid>`).
fn agent_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    let name = format!("husk-agent-{pid}");
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == name.as_str() {
                found.push(path);
            } else if path.components().count() < 8 {
                stack.push(path);
            }
        }
    }
    found
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
        .unwrap_or(true)
}
