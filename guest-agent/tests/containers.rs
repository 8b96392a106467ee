//! Container lifecycle and processes through the agent API, for real on
//! this machine (root): create, start, output, exit codes and signals,
//! stdin, a terminal, concurrent execs, delete.

mod harness;

use harness::{process, sleeper, spec, TestAgent};
use husk_proto::agent::v1 as pb;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_create_start_output_exit_delete() {
    let agent = TestAgent::start("lifecycle").await;
    let id = "life";
    let pid = agent
        .create(
            id,
            &spec(&["/bin/sh", "-c", "echo hello from busybox; echo oops >&2"]),
        )
        .await
        .expect("CreateContainer");
    assert!(pid > 1);
    let state = agent.state(id).await.unwrap();
    assert_eq!(state.status(), pb::ContainerStatus::Created);
    assert!(agent.container_dir(id).join("upper").is_dir());

    agent.start_container(id).await.expect("StartContainer");
    let (out, err) = agent.output(id, "").await;
    assert_eq!(out, "hello from busybox\n");
    assert_eq!(err, "oops\n");
    let status = agent.wait(id, "").await;
    assert_eq!((status.exit_code, status.signal), (0, 0));
    assert_eq!(status.reason, "Completed");
    let state = agent.state(id).await.unwrap();
    assert_eq!(state.status(), pb::ContainerStatus::Stopped);
    assert!(state.started_at_ns >= state.created_at_ns && state.created_at_ns > 0);
    assert_eq!(state.exit.unwrap().exit_code, 0);

    // Starting twice is refused; the state is intact.
    let again = agent.start_container(id).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");

    agent.delete(id, false).await.expect("DeleteContainer");
    assert!(
        harness::gone(&agent.container_dir(id)),
        "container folder left behind"
    );
    let missing = agent.state(id).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let list = agent
        .client
        .clone()
        .list_containers(pb::ListContainersRequest {})
        .await
        .unwrap();
    assert!(list.into_inner().containers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals() {
    let agent = TestAgent::start("exits").await;
    let (status, _, _) = agent.sh("code", spec(&[]), "exit 3").await;
    assert_eq!(
        (status.exit_code, status.signal, status.reason.as_str()),
        (3, 0, "Error")
    );

    // A process that handles SIGTERM itself.
    let trap = "trap 'echo got TERM; exit 42' TERM; echo armed; while :; do sleep 0.05; done";
    let mut s = spec(&[]);
    s["process"]["args"] = json!(["/bin/sh", "-c", trap]);
    agent.create("term", &s).await.unwrap();
    agent.start_container("term").await.unwrap();
    let mut output = agent
        .client
        .clone()
        .read_output(pb::ReadOutputRequest {
            container_id: "term".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = output.message().await.unwrap().unwrap();
    assert_eq!(first.data, b"armed\n");
    signal(&agent, "term", "", libc::SIGTERM, false)
        .await
        .unwrap();
    let status = agent.wait("term", "").await;
    assert_eq!((status.exit_code, status.signal), (42, 0));
    agent.delete("term", false).await.unwrap();

    // SIGKILL from the host.
    agent.create("kill", &sleeper()).await.unwrap();
    agent.start_container("kill").await.unwrap();
    let running = agent.delete("kill", false).await.unwrap_err();
    assert_eq!(
        running.code(),
        tonic::Code::FailedPrecondition,
        "{running:?}"
    );
    signal(&agent, "kill", "", libc::SIGKILL, false)
        .await
        .unwrap();
    let status = agent.wait("kill", "").await;
    assert_eq!(
        (status.exit_code, status.signal, status.reason.as_str()),
        (137, 9, "Signaled")
    );
    let late = signal(&agent, "kill", "", libc::SIGTERM, false)
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    agent.delete("kill", false).await.unwrap();

    let bad = signal(&agent, "nope", "", 15, false).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);
}

async fn signal(
    agent: &TestAgent,
    id: &str,
    exec_id: &str,
    signal: i32,
    all: bool,
) -> Result<(), tonic::Status> {
    agent
        .client
        .clone()
        .signal_process(pb::SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal: signal as u32,
            all,
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_piped_to_the_process() {
    let agent = TestAgent::start("stdin").await;
    agent
        .create_with("cat", &spec(&["/bin/sh", "-c", "tr a-z A-Z"]), true)
        .await
        .unwrap();
    agent.start_container("cat").await.unwrap();
    let mut client = agent.client.clone();
    for part in ["hello ", "through ", "stdin\n"] {
        client
            .write_stdin(pb::WriteStdinRequest {
                container_id: "cat".into(),
                exec_id: String::new(),
                data: part.as_bytes().to_vec(),
            })
            .await
            .unwrap();
    }
    client
        .close_stdin(pb::CloseStdinRequest {
            container_id: "cat".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    let (out, _) = agent.output("cat", "").await;
    assert_eq!(out, "HELLO THROUGH STDIN\n");
    assert_eq!(agent.wait("cat", "").await.exit_code, 0);
    agent.delete("cat", false).await.unwrap();

    // Without stdin, writing is refused.
    agent.create("nostdin", &sleeper()).await.unwrap();
    let refused = client
        .write_stdin(pb::WriteStdinRequest {
            container_id: "nostdin".into(),
            exec_id: String::new(),
            data: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
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
    let mut client = agent.client.clone();
    client
        .resize_terminal(pb::ResizeTerminalRequest {
            container_id: "box".into(),
            exec_id: "t1".into(),
            rows: 33,
            cols: 101,
        })
        .await
        .expect("ResizeTerminal");
    client
        .write_stdin(pb::WriteStdinRequest {
            container_id: "box".into(),
            exec_id: "t1".into(),
            data: b"typed\n".to_vec(),
        })
        .await
        .unwrap();
    let (out, err) = agent.output("box", "t1").await;
    // The terminal echoes input and turns \n into \r\n.
    assert!(out.contains("typed\r\n"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("33 101"), "{out:?}");
    assert!(out.contains("got typed"), "{out:?}");
    assert!(err.is_empty(), "a terminal has one output stream: {err:?}");
    assert_eq!(agent.wait("box", "t1").await.exit_code, 0);

    // A process without a terminal cannot be resized.
    agent
        .exec("box", "plain", &process(&["/bin/sleep", "5"]), false)
        .await
        .unwrap();
    let refused = client
        .resize_terminal(pb::ResizeTerminalRequest {
            container_id: "box".into(),
            exec_id: "plain".into(),
            rows: 1,
            cols: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
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
            let (out, _) = agent.output("box", &exec_id).await;
            let status = agent.wait("box", &exec_id).await;
            (i, out, status)
        });
    }
    let mut seen = 0;
    while let Some(result) = runs.join_next().await {
        let (i, out, status) = result.expect("exec task");
        assert!(out.starts_with(&format!("exec {i} pid ")), "{i}: {out:?}");
        assert_eq!(status.exit_code, i % 4, "{i}");
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
    assert_eq!(
        codes,
        [Ok(()), Err(tonic::Code::AlreadyExists)],
        "{codes:?}"
    );
    assert_eq!(agent.wait("box", "same").await.exit_code, 0);
    // Waited execs are forgotten; the container is untouched.
    let state = agent.state("box").await.unwrap();
    assert!(state.exec_ids.is_empty(), "{:?}", state.exec_ids);
    assert_eq!(state.status(), pb::ContainerStatus::Running);
    agent.delete("box", true).await.unwrap();
    assert!(harness::gone(&agent.container_dir("box")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_exits() {
    let agent = TestAgent::start("events").await;
    let mut events = agent
        .client
        .clone()
        .events(pb::EventsRequest {})
        .await
        .unwrap()
        .into_inner();
    agent.sh("ev", spec(&[]), "exit 5").await;
    let event = tokio::time::timeout(harness::TIMEOUT, events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.container_id, "ev");
    match event.kind {
        Some(pb::event::Kind::Exit(status)) => assert_eq!(status.exit_code, 5),
        other => panic!("expected an exit event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_metrics_and_sandbox() {
    let agent = TestAgent::start("sandbox").await;
    let mut client = agent.client.clone();
    let reply = client
        .setup_sandbox(pb::SetupSandboxRequest {
            hostname: "pod-a".into(),
            hosts: "127.0.0.1 localhost pod-a\n".into(),
            resolv_conf: "nameserver 10.0.0.10\n".into(),
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        })
        .await
        .expect("SetupSandbox")
        .into_inner();
    // A container sees the sandbox's files through bind mounts and shares
    // its uts namespace when the spec has none of its own.
    let mut s = spec(&[]);
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/resolv.conf", "type": "bind", "source": reply.resolv_conf_path, "options": ["rbind", "ro"]
    }));
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/hosts", "type": "bind", "source": reply.hosts_path, "options": ["rbind", "ro"]
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
    let (status, out, err) = agent
        .sh(
            "reader",
            s,
            "cat /etc/resolv.conf /etc/hosts; hostname; cat /proc/sys/net/ipv4/ip_forward",
        )
        .await;
    assert_eq!(status.exit_code, 0, "{err}");
    assert_eq!(
        out,
        "nameserver 10.0.0.10\n127.0.0.1 localhost pod-a\npod-a\n1\n"
    );

    let bad = client
        .setup_sandbox(pb::SetupSandboxRequest {
            sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("kernel.panic"), "{bad:?}");

    let metrics = client
        .guest_metrics(pb::GuestMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
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
