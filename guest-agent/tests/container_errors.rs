//! Bad input gets a clear error and changes nothing: no container, folder,
//! cgroup or process is left behind after a refused or failed create.

mod harness;

use harness::{sleeper, spec, TestAgent, LAYER};
use husk_proto::agent::v1 as pb;
use serde_json::json;

/// Asserts the agent holds no containers and left no folders.
async fn assert_clean(agent: &TestAgent) {
    let list = agent
        .client
        .clone()
        .list_containers(pb::ListContainersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
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

fn assert_code(status: &tonic::Status, code: tonic::Code, needle: &str) {
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
    assert_code(&err, tonic::Code::FailedPrecondition, "no-such-program");
    let err = agent.create("c2", &spec(&["/bin/nope"])).await.unwrap_err();
    assert_code(&err, tonic::Code::FailedPrecondition, "/bin/nope");
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
    assert_code(&err, tonic::Code::InvalidArgument, "process.user.uid");

    let mut s = spec(&["/bin/true"]);
    s["process"]["args"] = json!([]);
    let err = agent.create("c", &s).await.unwrap_err();
    assert_code(&err, tonic::Code::InvalidArgument, "process.args");

    let raw = agent
        .client
        .clone()
        .create_container(pb::CreateContainerRequest {
            container_id: "c".into(),
            oci_spec_json: b"{\"ociVersion\": ".to_vec(),
            layers: vec![LAYER.into()],
            stdin: false,
        })
        .await
        .unwrap_err();
    assert_code(&raw, tonic::Code::InvalidArgument, "oci_spec_json");

    for bad_id in ["", "../x", "a/b", ".hidden"] {
        let err = agent.create(bad_id, &sleeper()).await.unwrap_err();
        assert_code(&err, tonic::Code::InvalidArgument, "container_id");
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
        assert_code(&err, tonic::Code::InvalidArgument, needle);
    }
    // A symlink in the shared folder leading out of it.
    std::os::unix::fs::symlink("/etc", agent.shared().join("etc-link")).unwrap();
    let mut s = sleeper();
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/x", "type": "bind", "source": agent.shared().join("etc-link"), "options": ["rbind"]
    }));
    let err = agent.create("m", &s).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    for layer in ["../busybox", "/busybox", "etc-link", "missing"] {
        let err = agent
            .client
            .clone()
            .create_container(pb::CreateContainerRequest {
                container_id: "l".into(),
                oci_spec_json: serde_json::to_vec(&sleeper()).unwrap(),
                layers: vec![layer.into()],
                stdin: false,
            })
            .await
            .unwrap_err();
        assert_code(&err, tonic::Code::InvalidArgument, "layers[0]");
    }
    assert_clean(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_duplicates_are_refused() {
    let agent = TestAgent::start("big").await;
    // Over the spec bound but under the message bound: the agent's own check.
    let mut s = sleeper();
    s["annotations"] = json!({"big": "x".repeat(husk_proto::MAX_SPEC_BYTES)});
    let err = agent.create("c", &s).await.unwrap_err();
    assert_code(&err, tonic::Code::InvalidArgument, "oci_spec_json");
    // Over the gRPC message bound: the agent refuses to decode it (a client
    // that does not bound what it sends, unlike the host's).
    s["annotations"] = json!({"big": "x".repeat(husk_proto::MAX_MESSAGE_SIZE)});
    let err = agent
        .client
        .clone()
        .max_encoding_message_size(usize::MAX)
        .create_container(pb::CreateContainerRequest {
            container_id: "c".into(),
            oci_spec_json: serde_json::to_vec(&s).unwrap(),
            layers: vec![LAYER.into()],
            stdin: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );

    agent.create("dup", &sleeper()).await.unwrap();
    let err = agent.create("dup", &sleeper()).await.unwrap_err();
    assert_code(&err, tonic::Code::AlreadyExists, "dup");
    let state = agent.state("dup").await.unwrap();
    assert_eq!(
        state.status(),
        pb::ContainerStatus::Created,
        "the duplicate disturbed the original"
    );
    // A created container can be started after all that.
    agent.start_container("dup").await.unwrap();
    agent.delete("dup", true).await.unwrap();

    let err = agent
        .client
        .clone()
        .write_stdin(pb::WriteStdinRequest {
            container_id: "dup".into(),
            exec_id: String::new(),
            data: vec![0; husk_proto::MAX_STDIO_CHUNK + 1],
        })
        .await
        .unwrap_err();
    assert_code(&err, tonic::Code::InvalidArgument, "data");
    assert_clean(&agent).await;
}
