//! Bad input gets a clear error and changes nothing: no container, folder,
//! cgroup or process is left behind after a refused or failed create.

mod harness;

use harness::{sleeper, spec, TestAgent, LAYER};
use husk_agent_client::{AgentClientError, ProcessRef};
use husk_proto::agent::v1 as pb;
use serde_json::json;
use tonic::Code;

/// Asserts the agent holds no containers and left no folders.
async fn assert_clean(agent: &TestAgent) {
    let list = agent.client.list_containers().await.unwrap();
    assert!(list.is_empty(), "{list:?}");
    let dir = agent.dir.join("root/containers");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

/// Asserts the agent refused with `code` and a message naming `needle`.
fn assert_code(error: &AgentClientError, code: Code, needle: &str) {
    assert_eq!(error.code(), Some(code), "{error:?}");
    let message = error.agent_message().unwrap_or_default();
    assert!(
        message.contains(needle),
        "expected {needle:?} in {message:?}"
    );
}

/// Asserts a bare client's call was refused with `code` naming `needle`.
fn assert_status(status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "expected {needle:?} in {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_executable_is_named_and_nothing_is_left() {
    let agent = TestAgent::start("noexe").await;
    let err = agent
        .create("c1", &spec(&["no-such-program", "x"]))
        .await
        .unwrap_err();
    assert_code(&err, Code::FailedPrecondition, "no-such-program");
    let err = agent.create("c2", &spec(&["/bin/nope"])).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, "/bin/nope");
    assert_clean(&agent).await;
    // The id is free again.
    agent
        .create("c1", &sleeper())
        .await
        .expect("create after a failed create");
    agent.delete("c1", true).await.unwrap();
    assert_clean(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_specs_name_the_field() {
    let agent = TestAgent::start("badspec").await;
    let mut s = spec(&["/bin/true"]);
    s["process"]["user"]["uid"] = json!("root");
    let err = agent.create("c", &s).await.unwrap_err();
    assert_code(&err, Code::InvalidArgument, "process.user.uid");

    let mut s = spec(&["/bin/true"]);
    s["process"]["args"] = json!([]);
    let err = agent.create("c", &s).await.unwrap_err();
    assert_code(&err, Code::InvalidArgument, "process.args");

    // Not JSON at all: the client passes encoded specs through unchecked.
    let err = agent
        .client
        .create_container_from_json("c", b"{\"ociVersion\": ".to_vec(), &[LAYER.into()], false)
        .await
        .unwrap_err();
    assert_code(&err, Code::InvalidArgument, "oci_spec_json");

    for bad_id in ["", "../x", "a/b", ".hidden"] {
        let err = agent.create(bad_id, &sleeper()).await.unwrap_err();
        assert_code(&err, Code::InvalidArgument, "container_id");
    }
    assert_clean(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_and_layers_outside_the_allowed_roots_are_refused() {
    let agent = TestAgent::start("badmounts").await;
    let cases = [
        (
            json!({"destination": "/etc-host", "type": "bind", "source": "/etc", "options": ["rbind"]}),
            "mounts[",
        ),
        (
            json!({"destination": "/x", "type": "bind", "source": format!("{}/../..", agent.shared().display()), "options": ["rbind"]}),
            "..",
        ),
        (
            json!({"destination": "/a/../../b", "type": "tmpfs", "source": "tmpfs"}),
            "..",
        ),
        (
            json!({"destination": "relative", "type": "tmpfs", "source": "tmpfs"}),
            "relative",
        ),
    ];
    for (mount, needle) in cases {
        let mut s = sleeper();
        s["mounts"].as_array_mut().unwrap().push(mount.clone());
        let err = agent.create("m", &s).await.unwrap_err();
        assert_code(&err, Code::InvalidArgument, needle);
    }
    // A symlink in the shared folder leading out of it.
    std::os::unix::fs::symlink("/etc", agent.shared().join("etc-link")).unwrap();
    let mut s = sleeper();
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/x", "type": "bind", "source": agent.shared().join("etc-link"), "options": ["rbind"]
    }));
    let err = agent.create("m", &s).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err:?}");

    for layer in ["../busybox", "/busybox", "etc-link", "missing"] {
        let err = agent
            .client
            .create_container_from_json(
                "l",
                serde_json::to_vec(&sleeper()).unwrap(),
                &[layer.into()],
                false,
            )
            .await
            .unwrap_err();
        assert_code(&err, Code::InvalidArgument, "layers[0]");
    }
    assert_clean(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_duplicates_are_refused() {
    let agent = TestAgent::start("big").await;
    // The host's client refuses a spec over the bound before sending it;
    // a bare client (not the host's) sends it anyway, for the agent's own
    // checks.
    let mut s = sleeper();
    s["annotations"] = json!({"big": "x".repeat(husk_proto::MAX_SPEC_BYTES)});
    let err = agent.create("c", &s).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentClientError::TooLarge {
                what: "the OCI spec",
                ..
            }
        ),
        "{err:?}"
    );
    let create = |spec: &serde_json::Value| pb::CreateContainerRequest {
        container_id: "c".into(),
        oci_spec_json: serde_json::to_vec(spec).unwrap(),
        layers: vec![LAYER.into()],
        stdin: false,
    };
    // Over the spec bound but under the message bound: the agent's own check.
    let err = agent
        .wire()
        .await
        .create_container(create(&s))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "oci_spec_json");
    // Over the gRPC message bound: the agent refuses to decode it.
    s["annotations"] = json!({"big": "x".repeat(husk_proto::MAX_MESSAGE_SIZE)});
    let err = agent
        .wire()
        .await
        .max_encoding_message_size(usize::MAX)
        .create_container(create(&s))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );

    agent.create("dup", &sleeper()).await.unwrap();
    let err = agent.create("dup", &sleeper()).await.unwrap_err();
    assert_code(&err, Code::AlreadyExists, "dup");
    let status = agent.status("dup").await.unwrap();
    assert_eq!(
        status.state,
        husk_agent_client::ContainerState::Created,
        "the duplicate disturbed the original"
    );
    // A created container can be started after all that.
    agent.start_container("dup").await.unwrap();
    agent.delete("dup", true).await.unwrap();

    // One chunk over the bound is refused before the agent looks up the
    // (deleted) process; the host's client splits the same bytes into
    // chunks the agent takes, so it gets to the lookup.
    let err = agent
        .wire()
        .await
        .write_stdin(pb::WriteStdinRequest {
            container_id: "dup".into(),
            exec_id: String::new(),
            data: vec![0; husk_proto::MAX_STDIO_CHUNK + 1],
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "data");
    let err = agent
        .client
        .write_stdin(
            &ProcessRef::init("dup"),
            &vec![0; husk_proto::MAX_STDIO_CHUNK + 1],
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_clean(&agent).await;
}
