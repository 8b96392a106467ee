//! Daemon restarts: records, running VMs and agents reconciled at start;
//! what a crash left half-done cleaned up; and a stopping daemon never
//! stops a pod.

use std::time::Duration;

use husk_agent_client::OutputStream;

use super::*;
use crate::state::{ContainerState, PodState};
use crate::vm::VmLayout;

#[tokio::test]
async fn a_stopping_daemon_leaves_every_vm_running_and_a_restart_reattaches_them() {
    let mut h = Harness::new().await;
    let pods = [h.pod("a").await, h.pod("b").await, h.pod("c").await];
    let pids: Vec<i32> = pods.iter().map(|p| h.vm(p).pid).collect();
    h.stop_daemon().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.vms.running_count(), 3, "a daemon stop killed a VM");
    h.start_daemon().await;
    for (pod, pid) in pods.iter().zip(&pids) {
        let record = h.pod_record(pod);
        assert_eq!(record.state, PodState::Ready);
        assert_eq!(record.vm.unwrap().pid, *pid);
        assert!(!h.vm(pod).agent.shutdown_requested());
    }
    // Reattached for real: the agent answers calls again.
    let id = h.running(&pods[0], "app").await;
    assert_eq!(h.container_record(&id).state, ContainerState::Running);
}

#[tokio::test]
async fn a_restart_reconciles_containers_with_the_agent() {
    let mut h = Harness::new().await;
    let mut config = pod_config("web");
    let logs = h.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    config.log_directory = logs.display().to_string();
    let pod = h.rt().run_pod(config, String::new()).await.unwrap();
    let mut logged = container_config("logged");
    logged.log_path = "logged.log".into();
    let logged = h.rt().create_container(&pod, logged).await.unwrap();
    h.rt().start_container(&logged).await.unwrap();
    let exits = h.running(&pod, "exits").await;
    let created = h.container(&pod, "created").await;
    let forgotten = h.running(&pod, "forgotten").await;
    let agent = h.vm(&pod).agent;
    h.stop_daemon().await;
    // While the daemon is down: one exits, one is removed from the guest
    // behind our back, and an unknown one appears.
    agent.exit(&exits, 7);
    agent.forget(&forgotten);
    agent.add_running("stray-container");
    h.start_daemon().await;
    assert_eq!(h.container_record(&logged).state, ContainerState::Running);
    let exit = h
        .container_record(&exits)
        .exit
        .expect("recorded while down");
    assert_eq!(exit.exit_code, 7);
    assert_eq!(h.container_record(&created).state, ContainerState::Created);
    let lost = h.container_record(&forgotten).exit.expect("lost");
    assert_eq!(lost.exit_code, 255);
    assert!(
        lost.message.contains("not in the pod's VM"),
        "{}",
        lost.message
    );
    assert!(!agent.containers().contains(&"stray-container".to_string()));
    // The log copy goes on after the restart.
    agent.write_output(&logged, OutputStream::Stdout, b"after restart\n");
    let log = logs.join("logged.log");
    let mut text = String::new();
    for _ in 0..300 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("after restart") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(text.contains("stdout F after restart"), "{text}");
}

#[tokio::test]
async fn a_vm_that_died_while_the_daemon_was_down_leaves_its_pod_not_ready() {
    let mut h = Harness::new().await;
    let alive = h.pod("alive").await;
    let dead = h.pod("dead").await;
    let container = h.running(&dead, "app").await;
    h.stop_daemon().await;
    h.vm(&dead).crash(crate::vm::VmExit::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    });
    h.start_daemon().await;
    assert_eq!(h.pod_record(&alive).state, PodState::Ready);
    assert_eq!(h.pod_record(&dead).state, PodState::NotReady);
    let exit = h.container_record(&container).exit.expect("lost");
    assert_eq!(exit.exit_code, 255);
    // It can still be removed without a trace.
    h.rt().remove_pod(&dead).await.unwrap();
    assert!(!h.pod_folder(&dead).exists());
    assert_eq!(h.records_on_disk(), (1, 0));
}

#[tokio::test]
async fn a_pod_that_never_became_ready_has_its_vm_stopped() {
    let mut h = Harness::new().await;
    // The daemon dies while RunPodSandbox waits for the agent: the record
    // says Creating and names a running VM.
    h.vms.on_start(|agent| agent.hang("SetupSandbox"));
    let rt = h.rt().clone();
    let booting = tokio::spawn(async move { rt.run_pod(pod_config("slow"), String::new()).await });
    let pod = loop {
        if let Some(pod) = h.rt().pods().first() {
            if pod.record().vm.is_some() {
                break pod.id.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    booting.abort();
    let _ = booting.await;
    assert!(h.vm(&pod).is_running());
    h.restart().await;
    assert_eq!(h.pod_record(&pod).state, PodState::NotReady);
    assert!(
        !h.vm(&pod).is_running(),
        "the half-booted VM was left running"
    );
    h.rt().remove_pod(&pod).await.unwrap();
    assert_eq!(h.records_on_disk(), (0, 0));
}

#[tokio::test]
async fn a_vm_no_record_names_is_killed_and_its_folder_removed() {
    let mut h = Harness::new().await;
    let kept = h.pod("kept").await;
    h.stop_daemon().await;
    let stray_id = "f".repeat(64);
    let stray = h
        .vms
        .start_unrecorded(&VmLayout::new(&h.config.run_dir, &stray_id));
    assert!(stray.is_running());
    h.start_daemon().await;
    assert!(!stray.is_running(), "the stray VM still runs");
    assert!(!h.pod_folder(&stray_id).exists());
    assert!(h.vm(&kept).is_running());
    assert!(h.rt().pod(&stray_id).is_err());
}

#[tokio::test]
async fn an_agent_that_does_not_answer_after_a_restart_gets_its_vm_stopped() {
    let mut h = Harness::new().await;
    let pod = h.pod("web").await;
    let vm = h.vm(&pod);
    h.stop_daemon().await;
    vm.agent.hang("Health");
    // Short enough for a test: the reattach deadline is 15 s.
    let started = std::time::Instant::now();
    h.start_daemon().await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(h.pod_record(&pod).state, PodState::NotReady);
    assert!(!vm.is_running());
}

#[tokio::test]
async fn a_restart_during_a_create_leaves_the_container_exited() {
    let mut h = Harness::new().await;
    let pod = h.pod("web").await;
    let vm = h.vm(&pod);
    vm.agent.hang("CreateContainer");
    let rt = h.rt().clone();
    let create =
        tokio::spawn(async move { rt.create_container(&pod, container_config("app")).await });
    while !vm.agent.calls().contains(&"CreateContainer".to_string()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The daemon dies with the record written and the agent's answer
    // never read.
    create.abort();
    let _ = create.await;
    vm.agent.unhang("CreateContainer");
    h.restart().await;
    let containers = h.rt().containers();
    assert_eq!(containers.len(), 1, "the record survives");
    let record = containers[0].record();
    assert_eq!(record.state, ContainerState::Exited);
    assert_eq!(record.exit.unwrap().exit_code, 255);
    assert!(h.vm(&containers[0].pod_id).is_running());
    h.rt().remove_container(&containers[0].id).await.unwrap();
    assert_eq!(h.records_on_disk(), (1, 0));
}
