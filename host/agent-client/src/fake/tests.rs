//! The fake agent through the real client: what the runtime's tests rely on.

use std::time::Duration;

use oci_spec::runtime::{ProcessBuilder, Spec};

use super::FakeAgent;
use crate::{
    AgentClient, AgentEvent, ContainerState, ExitReason, OutputStream, ProcessRef, SignalScope,
};

async fn connected(agent: &FakeAgent) -> (tempfile::TempDir, super::FakeServer, AgentClient) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let server = agent.serve(&socket).unwrap();
    let client = AgentClient::connect_unix(&socket, Duration::from_secs(5))
        .await
        .unwrap()
        .with_call_timeout(Duration::from_millis(500));
    (dir, server, client)
}

fn process(args: &[&str]) -> oci_spec::runtime::Process {
    ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .cwd("/")
        .build()
        .unwrap()
}

async fn running(client: &AgentClient, id: &str) {
    client
        .create_container(id, &Spec::default(), &[], false)
        .await
        .unwrap();
    client.start_container(id).await.unwrap();
}

async fn output_of(client: &AgentClient, target: &ProcessRef) -> (String, String) {
    let mut reader = client.read_output(target).await.unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    while let Some(chunk) = reader.next().await.unwrap() {
        let text = String::from_utf8(chunk.data).unwrap();
        match chunk.stream {
            OutputStream::Stdout => out += &text,
            OutputStream::Stderr => err += &text,
        }
    }
    (out, err)
}

#[tokio::test]
async fn a_container_runs_until_the_test_ends_it_and_the_exit_is_announced() {
    let agent = FakeAgent::new();
    let (_dir, _server, client) = connected(&agent).await;
    let mut events = client.events().await.unwrap();
    running(&client, "c1").await;
    assert_eq!(
        client.container_status("c1").await.unwrap().state,
        ContainerState::Running
    );
    agent.write_output("c1", OutputStream::Stdout, b"early\n");
    agent.exit("c1", 3);
    let Some(AgentEvent::Exited { process, exit, .. }) = events.next().await.unwrap() else {
        panic!("no exit event");
    };
    assert_eq!(process, ProcessRef::init("c1"));
    assert_eq!((exit.code, exit.reason), (3, ExitReason::Error));
    // Output written before anyone read it is kept; the stream then ends.
    let (out, _) = output_of(&client, &ProcessRef::init("c1")).await;
    assert_eq!(out, "early\n");
    let waited = client
        .wait(&ProcessRef::init("c1"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(waited.code, 3);
    client.delete_container("c1", false).await.unwrap();
    assert!(agent.containers().is_empty());
}

#[tokio::test]
async fn execs_follow_the_command_language() {
    let agent = FakeAgent::new();
    let (_dir, _server, client) = connected(&agent).await;
    running(&client, "c1").await;
    let cases: [(&[&str], &str, &str, i32); 4] = [
        (&["echo", "hi", "there"], "hi there\n", "", 0),
        (&["echo-err", "oops"], "", "oops\n", 0),
        (&["exit", "4"], "", "", 4),
        (
            &["nonsense"],
            "",
            "fake agent: Some(\"nonsense\"): command not found\n",
            127,
        ),
    ];
    for (n, (args, stdout, stderr, code)) in cases.into_iter().enumerate() {
        let target = ProcessRef::exec("c1", format!("e{n}"));
        client.exec(&target, &process(args), false).await.unwrap();
        assert_eq!(
            output_of(&client, &target).await,
            (stdout.into(), stderr.into())
        );
        let exit = client.wait(&target, Duration::from_secs(1)).await.unwrap();
        assert_eq!(exit.code, code, "{args:?}");
    }
    // A sleeping exec runs until signalled.
    let sleeper = ProcessRef::exec("c1", "sleeper");
    client
        .exec(&sleeper, &process(&["sleep"]), false)
        .await
        .unwrap();
    let error = client
        .wait(&sleeper, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    client
        .signal(&sleeper, 15, SignalScope::Process)
        .await
        .unwrap();
    let exit = client.wait(&sleeper, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.reason),
        (143, 15, ExitReason::Signaled)
    );
}

#[tokio::test]
async fn ignored_signals_leave_the_process_running_but_sigkill_does_not() {
    let agent = FakeAgent::new();
    let (_dir, _server, client) = connected(&agent).await;
    running(&client, "c1").await;
    agent.ignore_signal("c1", 15);
    let init = ProcessRef::init("c1");
    client
        .signal(&init, 15, SignalScope::Process)
        .await
        .unwrap();
    assert!(client.container_status("c1").await.unwrap().exit.is_none());
    client
        .signal(&init, 9, SignalScope::Container)
        .await
        .unwrap();
    let exit = client.container_status("c1").await.unwrap().exit.unwrap();
    assert_eq!(exit.code, 137);
    // Signalling what has exited is a precondition failure, as the agent's.
    let error = client
        .signal(&init, 9, SignalScope::Process)
        .await
        .unwrap_err();
    assert!(error.is_failed_precondition(), "{error}");
}

#[tokio::test]
async fn scripted_failures_hangs_and_oom_kills() {
    let agent = FakeAgent::new();
    let (_dir, _server, client) = connected(&agent).await;
    agent.fail_next("StartContainer", tonic::Status::internal("boom"));
    client
        .create_container("c1", &Spec::default(), &[], false)
        .await
        .unwrap();
    let error = client.start_container("c1").await.unwrap_err();
    assert_eq!(error.agent_message(), Some("boom"));
    client.start_container("c1").await.unwrap();
    agent.hang("ListContainers");
    let error = client.list_containers().await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    agent.unhang("ListContainers");
    agent.oom_kill("c1");
    let listed = client.list_containers().await.unwrap();
    assert_eq!(listed[0].exit.unwrap().reason, ExitReason::OomKilled);
    assert!(agent.calls().contains(&"StartContainer".to_string()));
}

#[tokio::test]
async fn a_stopped_server_refuses_calls_and_ends_streams() {
    let agent = FakeAgent::new();
    let (_dir, server, client) = connected(&agent).await;
    running(&client, "c1").await;
    let mut events = client.events().await.unwrap();
    let mut output = client.read_output(&ProcessRef::init("c1")).await.unwrap();
    server.stop();
    assert!(!matches!(events.next().await, Ok(Some(_))));
    assert!(!matches!(output.next().await, Ok(Some(_))));
    assert!(client.health().await.is_err());
}

#[tokio::test]
async fn shutdown_is_seen_by_whoever_plays_the_vm() {
    let agent = FakeAgent::new();
    let (_dir, _server, client) = connected(&agent).await;
    assert!(!agent.shutdown_requested());
    client.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), agent.wait_shutdown())
        .await
        .unwrap();
    assert!(agent.shutdown_requested());
}

#[tokio::test]
async fn an_agent_with_an_old_api_is_refused_on_connect() {
    let agent = FakeAgent::new();
    agent.set_api_version(husk_proto::MIN_API_VERSION - 1);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _server = agent.serve(&socket).unwrap();
    let error = AgentClient::connect_unix(&socket, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(error, crate::AgentClientError::Incompatible { .. }),
        "{error}"
    );
}
