//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ExecSync, UpdateContainerResources.

use std::time::Duration;

use husk_agent_client::OutputStream;

use super::*;
use crate::server::status;
use crate::state::ContainerState;
use tonic::Code;

#[tokio::test]
async fn create_start_exit_remove() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let mut events = h.rt().subscribe();
    let id = h.container(&pod, "app").await;
    let agent = h.vm(&pod).agent;
    let spec = agent.spec(&id).expect("the agent got a spec");
    assert_eq!(
        spec.process().as_ref().and_then(|p| p.args().clone()),
        Some(vec!["sleep".to_string()])
    );
    assert_eq!(h.container_record(&id).state, ContainerState::Created);
    h.rt().start_container(&id).await.unwrap();
    assert_eq!(h.container_record(&id).state, ContainerState::Running);
    assert!(h.container_record(&id).started_at_ns > 0);
    agent.exit(&id, 3);
    let record = h
        .until_container(&id, "exited", |r| r.state == ContainerState::Exited)
        .await;
    let exit = record.exit.unwrap();
    assert_eq!((exit.exit_code, exit.reason.as_str()), (3, "Error"));
    h.rt().remove_container(&id).await.unwrap();
    assert!(agent.containers().is_empty());
    assert!(h.rt().container(&id).is_err_and(|e| e.is_not_found()));
    assert_eq!(h.records_on_disk(), (1, 0));
    let kinds: Vec<_> = drain(&mut events).into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        kinds,
        vec![
            LifecycleKind::Created,
            LifecycleKind::Started,
            LifecycleKind::Stopped,
            LifecycleKind::Deleted
        ]
    );
    // Removing again, or something unknown, is not an error (CRI).
    h.rt().remove_container(&id).await.unwrap();
}

#[tokio::test]
async fn a_create_the_agent_refuses_leaves_no_record() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let agent = h.vm(&pod).agent;
    agent.fail_next(
        "CreateContainer",
        tonic::Status::invalid_argument("process.args[0] \"sleep\" not found"),
    );
    let error = h
        .rt()
        .create_container(&pod, container_config("app"))
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::InvalidArgument);
    assert_eq!(
        status::message(&error),
        "create the container: process.args[0] \"sleep\" not found"
    );
    assert!(h.rt().containers().is_empty());
    assert_eq!(h.records_on_disk(), (1, 0));
    // The name is free again.
    h.container(&pod, "app").await;
}

#[tokio::test]
async fn bad_container_configs_are_refused_naming_the_field() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let mut no_image = container_config("app");
    no_image.image = None;
    let error = h.rt().create_container(&pod, no_image).await.unwrap_err();
    assert_eq!(status::message(&error), "config.image.image is empty");
    let mut unknown = container_config("app");
    unknown.image.as_mut().unwrap().image = "nope:1".into();
    let error = h.rt().create_container(&pod, unknown).await.unwrap_err();
    assert_eq!(status::code(&error), Code::NotFound);
    assert!(status::message(&error).contains("nope:1"), "{error}");
    let mut escape = container_config("app");
    escape.log_path = "../x.log".into();
    let mut pod_with_logs = pod_config("logs");
    pod_with_logs.log_directory = h.dir.path().join("logs").display().to_string();
    let logs_pod = h.rt().run_pod(pod_with_logs, String::new()).await.unwrap();
    let error = h
        .rt()
        .create_container(&logs_pod, escape)
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::InvalidArgument, "{error}");
    let mut mount = container_config("app");
    mount.mounts = vec![k8s_cri::v1::Mount {
        host_path: "/does/not/exist".into(),
        container_path: "/data".into(),
        ..Default::default()
    }];
    let error = h.rt().create_container(&pod, mount).await.unwrap_err();
    assert!(
        status::message(&error).contains("mounts[0].host_path"),
        "{error}"
    );
    h.container(&pod, "app").await;
    let error = h
        .rt()
        .create_container(&pod, container_config("app"))
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::AlreadyExists);
    assert!(h.vm(&pod).agent.containers().len() == 1);
}

#[tokio::test]
async fn start_wants_a_created_container() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let id = h.running(&pod, "app").await;
    let error = h.rt().start_container(&id).await.unwrap_err();
    assert_eq!(status::code(&error), Code::FailedPrecondition);
    assert!(
        status::message(&error).contains("is Running, not Created"),
        "{error}"
    );
}

#[tokio::test]
async fn stop_sends_the_stop_signal_then_kills_after_the_timeout() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let agent = h.vm(&pod).agent;
    let polite = h.running(&pod, "polite").await;
    h.rt()
        .stop_container(&polite, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        h.container_record(&polite).exit.unwrap().exit_code,
        128 + libc::SIGTERM
    );
    let stubborn = h.running(&pod, "stubborn").await;
    agent.ignore_signal(&stubborn, libc::SIGTERM);
    let started = std::time::Instant::now();
    h.rt()
        .stop_container(&stubborn, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.container_record(&stubborn).exit.unwrap().exit_code, 137);
    // Stopping what has stopped is not an error.
    h.rt()
        .stop_container(&stubborn, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn exec_sync_collects_output_and_exit_codes_and_kills_on_timeout() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let id = h.running(&pod, "app").await;
    let run = |cmd: &[&str], timeout| {
        h.rt().exec_sync(
            &id,
            cmd.iter().map(|s| s.to_string()).collect(),
            Duration::from_millis(timeout),
        )
    };
    let out = run(&["echo", "hello", "there"], 5000).await.unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.exit_code),
        (&b"hello there\n"[..], 0)
    );
    let out = run(&["echo-err", "oops"], 5000).await.unwrap();
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(run(&["exit", "3"], 5000).await.unwrap().exit_code, 3);
    let error = run(&["sleep"], 300).await.unwrap_err();
    assert_eq!(status::code(&error), Code::DeadlineExceeded);
    assert!(
        status::message(&error).contains("did not finish within"),
        "{error}"
    );
    let error = h
        .rt()
        .exec_sync(&id, vec![], Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(status::message(&error), "cmd is empty");
    // The exec'd process had the container's own process settings.
    let spec = h.vm(&pod).agent.spec(&id).unwrap();
    assert!(spec.process().is_some());
}

#[tokio::test]
async fn container_output_reaches_the_cri_log() {
    let h = Harness::new().await;
    let mut config = pod_config("web");
    let logs = h.dir.path().join("logs");
    // kubelet makes the pod's and the container's log folders.
    std::fs::create_dir_all(logs.join("app")).unwrap();
    config.log_directory = logs.display().to_string();
    let pod = h.rt().run_pod(config, String::new()).await.unwrap();
    let mut container = container_config("app");
    container.log_path = "app/0.log".into();
    let id = h.rt().create_container(&pod, container).await.unwrap();
    h.rt().start_container(&id).await.unwrap();
    let agent = h.vm(&pod).agent;
    agent.write_output(&id, OutputStream::Stdout, b"hello\n");
    agent.write_output(&id, OutputStream::Stderr, b"oops\n");
    agent.exit(&id, 0);
    let log = logs.join("app/0.log");
    let mut text = String::new();
    for _ in 0..300 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with(" stdout F hello"), "{text}");
    assert!(lines[1].ends_with(" stderr F oops"), "{text}");
}

#[tokio::test]
async fn resource_updates_reach_the_agent_and_the_record() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let id = h.running(&pod, "app").await;
    let resources = k8s_cri::v1::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    h.rt()
        .update_container_resources(&id, resources.clone())
        .await
        .unwrap();
    let applied = h
        .vm(&pod)
        .agent
        .resources(&id)
        .expect("UpdateContainer was called");
    assert_eq!(
        applied.memory().as_ref().and_then(|m| m.limit()),
        Some(64 << 20)
    );
    let recorded = h
        .container_record(&id)
        .config
        .linux
        .unwrap()
        .resources
        .unwrap();
    assert_eq!(recorded, resources);
}

#[tokio::test]
async fn containers_of_one_pod_are_created_concurrently() {
    let h = Harness::new().await;
    let pod = h.pod("web").await;
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let created = futures::future::join_all(
        names
            .iter()
            .map(|n| h.rt().create_container(&pod, container_config(n))),
    )
    .await;
    let mut ids: Vec<String> = created.into_iter().map(Result::unwrap).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    let mut in_guest = h.vm(&pod).agent.containers();
    in_guest.sort();
    assert_eq!(in_guest, ids);
    // Start and remove race on each: every container ends removed.
    let races = ids.iter().flat_map(|id| {
        let (rt, rt2) = (h.rt().clone(), h.rt().clone());
        let (a, b) = (id.clone(), id.clone());
        [
            tokio::spawn(async move {
                let _ = rt.start_container(&a).await;
                Ok(())
            }),
            tokio::spawn(async move { rt2.remove_container(&b).await }),
        ]
    });
    for result in futures::future::join_all(races).await {
        result.unwrap().unwrap();
    }
    assert!(h.rt().containers().is_empty());
    assert!(h.vm(&pod).agent.containers().is_empty());
}
