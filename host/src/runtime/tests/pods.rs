//! RunPodSandbox, StopPodSandbox, RemovePodSandbox.

use super::*;
use crate::server::status;
use crate::state::PodState;
use crate::vm::VmExit;
use tonic::Code;

#[tokio::test]
async fn a_pod_runs_in_its_own_vm_with_its_files_and_loopback() {
    let h = Harness::new().await;
    let mut events = h.rt().subscribe();
    let id = h.pod("web").await;
    let record = h.pod_record(&id);
    assert_eq!(record.state, PodState::Ready);
    let vm = h.vm(&id);
    let recorded = record.vm.expect("the VM is recorded");
    assert_eq!(recorded.pid, vm.pid);
    assert_eq!(recorded.run_dir, h.pod_folder(&id));
    assert_eq!(vm.spec.memory_mib, h.config.vm.default_memory_mib);
    let sandbox = vm.agent.sandbox().expect("SetupSandbox was called");
    assert_eq!(sandbox.hostname, "web");
    assert!(
        sandbox.hosts.contains("127.0.1.1\tweb"),
        "{}",
        sandbox.hosts
    );
    let network = vm.agent.network().expect("SetupNetwork was called");
    assert_eq!(network.interfaces.len(), 1);
    assert_eq!(network.interfaces[0].name, "lo");
    assert!(record.sandbox_files.hosts.is_some());
    assert_eq!(
        drain(&mut events),
        vec![
            (id.clone(), LifecycleKind::Created),
            (id.clone(), LifecycleKind::Started)
        ]
    );
    assert_eq!(h.records_on_disk(), (1, 0));
}

#[tokio::test]
async fn a_vm_that_cannot_start_leaves_nothing() {
    let h = Harness::new().await;
    h.vms.fail_start(true);
    let error = h
        .rt()
        .run_pod(pod_config("web"), String::new())
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::Internal);
    assert!(status::message(&error).contains("cannot start"), "{error}");
    assert!(h.rt().pods().is_empty());
    assert_eq!(h.records_on_disk(), (0, 0));
    assert_eq!(
        std::fs::read_dir(h.config.run_dir.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn a_vmm_that_dies_while_booting_says_how() {
    let h = Harness::new().await;
    h.vms.die_at_start(Some(VmExit::Signaled {
        signal: libc::SIGSYS,
        core_dumped: false,
    }));
    let error = h
        .rt()
        .run_pod(pod_config("web"), String::new())
        .await
        .unwrap_err();
    let text = status::message(&error);
    assert!(
        text.contains("killed by SIGSYS (31) while booting"),
        "{text}"
    );
    assert!(text.contains("husk-vmm said:"), "{text}");
    assert!(h.rt().pods().is_empty());
    assert_eq!(h.records_on_disk(), (0, 0));
    // The VM monitor records the end after the pod is gone: it must not
    // bring the record back.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(h.records_on_disk(), (0, 0));
}

#[tokio::test]
async fn a_failed_sandbox_setup_stops_the_vm_and_leaves_nothing() {
    let h = Harness::new().await;
    h.vms.on_start(|agent| {
        agent.fail_next(
            "SetupSandbox",
            tonic::Status::invalid_argument("sysctl kernel.hostname is not namespaced"),
        )
    });
    let error = h
        .rt()
        .run_pod(pod_config("web"), String::new())
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::InvalidArgument, "{error}");
    assert_eq!(
        status::message(&error),
        "set up the sandbox: sysctl kernel.hostname is not namespaced"
    );
    assert_eq!(h.vms.running_count(), 0);
    assert!(h.rt().pods().is_empty());
    assert_eq!(h.records_on_disk(), (0, 0));
}

#[tokio::test]
async fn bad_pod_configs_are_refused_naming_the_field() {
    let h = Harness::new().await;
    let mut nameless = pod_config("web");
    nameless.metadata.as_mut().unwrap().name.clear();
    let error = h.rt().run_pod(nameless, String::new()).await.unwrap_err();
    assert_eq!(status::code(&error), Code::InvalidArgument);
    assert_eq!(status::message(&error), "config.metadata.name is empty");
    let error = h
        .rt()
        .run_pod(pod_config("web"), "kata".into())
        .await
        .unwrap_err();
    assert!(
        status::message(&error).contains("runtime_handler \"kata\""),
        "{error}"
    );
    let mut relative = pod_config("web");
    relative.log_directory = "logs".into();
    let error = h.rt().run_pod(relative, String::new()).await.unwrap_err();
    assert!(status::message(&error).contains("log_directory"), "{error}");
    assert_eq!(h.vms.running_count(), 0);
}

#[tokio::test]
async fn a_pod_name_is_taken_once() {
    let h = Harness::new().await;
    let first = h.pod("web").await;
    let error = h
        .rt()
        .run_pod(pod_config("web"), String::new())
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::AlreadyExists);
    assert!(status::message(&error).contains(&first), "{error}");
    assert_eq!(h.rt().pods().len(), 1);
}

#[tokio::test]
async fn stop_powers_the_guest_off_and_is_idempotent() {
    let h = Harness::new().await;
    let id = h.pod("web").await;
    let container = h.running(&id, "app").await;
    let mut events = h.rt().subscribe();
    h.rt().stop_pod(&id).await.unwrap();
    let vm = h.vm(&id);
    assert!(vm.agent.shutdown_requested());
    assert!(!vm.is_running());
    assert_eq!(h.pod_record(&id).state, PodState::NotReady);
    let record = h.container_record(&container);
    assert_eq!(
        record.exit.as_ref().map(|e| e.exit_code),
        Some(137),
        "{record:?}"
    );
    let seen = drain(&mut events);
    assert!(
        seen.contains(&(id.clone(), LifecycleKind::Stopped)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(container.clone(), LifecycleKind::Stopped)),
        "{seen:?}"
    );
    // Again, and for a pod nobody knows: not errors (CRI).
    h.rt().stop_pod(&id).await.unwrap();
    h.rt().stop_pod("0123456789").await.unwrap();
    assert_eq!(
        drain(&mut events)
            .iter()
            .filter(|(_, kind)| *kind == LifecycleKind::Stopped)
            .count(),
        0,
        "stopped is announced once"
    );
}

#[tokio::test]
async fn remove_leaves_no_vm_record_or_folder() {
    let h = Harness::new().await;
    let id = h.pod("web").await;
    h.running(&id, "app").await;
    h.container(&id, "sidecar").await;
    assert_eq!(h.records_on_disk(), (1, 2));
    h.rt().remove_pod(&id).await.unwrap();
    assert_eq!(h.vms.running_count(), 0);
    assert_eq!(h.records_on_disk(), (0, 0));
    assert!(!h.pod_folder(&id).exists());
    assert!(h.rt().pods().is_empty());
    assert!(h.rt().containers().is_empty());
    assert!(h.rt().pod(&id).is_err_and(|e| e.is_not_found()));
    h.rt().remove_pod(&id).await.unwrap();
}

#[tokio::test]
async fn a_vm_that_dies_makes_its_pod_not_ready_and_says_how() {
    let h = Harness::new().await;
    let id = h.pod("web").await;
    let container = h.running(&id, "app").await;
    h.vm(&id).crash(VmExit::Signaled {
        signal: libc::SIGSEGV,
        core_dumped: false,
    });
    let record = h
        .until_container(&container, "lost with its VM", |r| r.exit.is_some())
        .await;
    let exit = record.exit.unwrap();
    assert_eq!(exit.exit_code, 255);
    assert!(exit.message.contains("SIGSEGV"), "{}", exit.message);
    let pod = h.pod_record(&id);
    assert_eq!(pod.state, PodState::NotReady);
    // How it ended stays in the record, for the verbose status.
    std::fs::write(h.pod_folder(&id).join("vmm.log"), "vmm: last words\n").ok();
    let ended = pod.vm.unwrap().ended.expect("the end is recorded");
    assert!(ended.how.contains("SIGSEGV"), "{}", ended.how);
    let info = crate::server::convert::vm_info(&h.pod_record(&id).vm.unwrap());
    assert!(
        info["ended"]["how"].as_str().unwrap().contains("SIGSEGV"),
        "{info}"
    );
    // Containers of a pod without a VM refuse what needs one.
    let error = h
        .rt()
        .create_container(&id, container_config("late"))
        .await
        .unwrap_err();
    assert_eq!(status::code(&error), Code::FailedPrecondition);
    h.rt().remove_pod(&id).await.unwrap();
    assert_eq!(h.records_on_disk(), (0, 0));
}

#[tokio::test]
async fn pods_start_and_stop_concurrently() {
    let h = Harness::new().await;
    let names: Vec<String> = (0..6).map(|i| format!("pod{i}")).collect();
    let started = futures::future::join_all(
        names
            .iter()
            .map(|n| h.rt().run_pod(pod_config(n), String::new())),
    )
    .await;
    let ids: Vec<String> = started.into_iter().map(Result::unwrap).collect();
    assert_eq!(h.vms.running_count(), 6);
    // Stop and remove race on every pod: each ends removed, no error.
    let races = ids.iter().flat_map(|id| {
        let rt = h.rt().clone();
        let rt2 = h.rt().clone();
        let (a, b) = (id.clone(), id.clone());
        [
            tokio::spawn(async move { rt.stop_pod(&a).await }),
            tokio::spawn(async move { rt2.remove_pod(&b).await }),
        ]
    });
    for result in futures::future::join_all(races).await {
        result.unwrap().unwrap();
    }
    assert_eq!(h.vms.running_count(), 0);
    assert_eq!(h.records_on_disk(), (0, 0));
}

#[tokio::test]
async fn a_vm_that_dies_during_a_create_fails_it_and_leaves_no_container() {
    let h = Harness::new().await;
    let id = h.pod("web").await;
    let vm = h.vm(&id);
    vm.agent.hang("CreateContainer");
    let rt = h.rt().clone();
    let create =
        tokio::spawn(async move { rt.create_container(&id, container_config("app")).await });
    while !vm.agent.calls().contains(&"CreateContainer".to_string()) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    vm.crash(VmExit::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    });
    let error = create.await.unwrap().unwrap_err();
    assert_ne!(status::code(&error), Code::Ok);
    assert!(h.rt().containers().is_empty());
    assert_eq!(h.records_on_disk(), (1, 0));
}

#[tokio::test]
async fn stop_and_remove_twice_at_once_are_both_fine() {
    let h = Harness::new().await;
    let id = h.pod("web").await;
    h.running(&id, "app").await;
    let (a, b) = tokio::join!(h.rt().stop_pod(&id), h.rt().stop_pod(&id));
    a.unwrap();
    b.unwrap();
    assert!(!h.vm(&id).is_running());
    let (a, b) = tokio::join!(h.rt().remove_pod(&id), h.rt().remove_pod(&id));
    a.unwrap();
    b.unwrap();
    assert_eq!(h.records_on_disk(), (0, 0));
    assert!(!h.pod_folder(&id).exists());
}
