//! The husk daemon as a process on this host, driven over the CRI: what
//! works without booting a guest. Images are pulled from a local
//! registry; a pod whose VM cannot start fails cleanly, leaving nothing.
//! Pods that boot are tested in the rig (husk-cri-tests' suite).

use husk_cri_tests::daemon::{mounts_under, vmm_processes_mentioning, Daemon, DaemonSetup};
use husk_cri_tests::fixtures::pod_config;
use husk_tests::registry::{push_test_images, TestRegistry};
use k8s_cri::v1 as cri;
use std::path::Path;
use tonic::Code;

fn setup(root: &Path, registry: Option<&str>) -> DaemonSetup {
    // Not a kernel: husk-vmm refuses it at once, on every kind of host.
    let kernel = root.join("not-a-kernel");
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(&kernel, b"garbage").unwrap();
    DaemonSetup {
        husk: env!("CARGO_BIN_EXE_husk").into(),
        // The static build `cargo xtask test` passes, else a sibling.
        vmm: std::env::var_os(husk_tests::artifacts::ENV_HUSK_VMM)
            .map(Into::into)
            .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_husk")).with_file_name("husk-vmm")),
        kernel: kernel.clone(),
        initramfs: kernel,
        root: root.join("daemon"),
        insecure_registries: registry.map(|r| vec![r.to_string()]).unwrap_or_default(),
        mirrors: Vec::new(),
        boot_timeout_secs: 30,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn images_through_the_cri() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&dir.path().join("registry")).unwrap();
    let busybox = husk_tests::busybox::host_binary().unwrap();
    let images = push_test_images(registry.addr(), &busybox).await.unwrap();
    let (mut daemon, mut cri) = Daemon::start(setup(dir.path(), Some(registry.addr())))
        .await
        .unwrap();
    let spec = |image: &str| {
        Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        })
    };
    let pulled = cri
        .images
        .pull_image(cri::PullImageRequest {
            image: spec(&images.multi.reference),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let status = cri
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(&images.multi.reference),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(status.id, pulled);
    assert!(
        status.repo_tags.contains(&images.multi.reference),
        "{status:?}"
    );
    assert!(status.size > 0);
    // By id and by digest reference too.
    for name in [pulled.clone(), status.repo_digests[0].clone()] {
        let found = cri
            .images
            .image_status(cri::ImageStatusRequest {
                image: spec(&name),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image;
        assert_eq!(found.map(|i| i.id), Some(pulled.clone()), "{name}");
    }
    let unknown = cri
        .images
        .pull_image(cri::PullImageRequest {
            image: spec(&format!("{}/husk-test/absent:1", registry.addr())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let malformed = cri
        .images
        .pull_image(cri::PullImageRequest {
            image: spec("Bad//Reference::"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    let empty = cri
        .images
        .pull_image(cri::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    // The store survives a SIGKILL of the daemon.
    cri = daemon.restart().await.unwrap();
    let listed = cri
        .images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1, "{listed:?}");
    cri.images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&images.multi.reference),
        })
        .await
        .unwrap();
    cri.images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&images.multi.reference),
        })
        .await
        .expect("removing an absent image is not an error");
    let listed = cri
        .images
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    let fs = cri
        .images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fs.image_filesystems.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_vm_cannot_start_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path(), None);
    let run_dir = setup.run_dir();
    let (mut daemon, mut cri) = Daemon::start(setup).await.unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let error = cri
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("broken", &logs.display().to_string())),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::Internal | Code::Unavailable),
        "{error:?}"
    );
    assert!(error.message().contains("VM"), "{}", error.message());
    let pods = cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert!(vmm_processes_mentioning(&run_dir.display().to_string()).is_empty());
    assert!(mounts_under(&run_dir).is_empty());
    let left: Vec<_> = std::fs::read_dir(run_dir.join("pods"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // Nothing comes back after a restart either.
    cri = daemon.restart().await.unwrap();
    let pods = cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, mut cri) = Daemon::start(setup(dir.path(), None)).await.unwrap();
    let status = cri
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.unwrap().conditions;
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status && !network.reason.is_empty());
    let cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "pod status",
            cri.runtime
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: "abc".into(),
                    verbose: false,
                })
                .await
                .map(|_| ()),
        ),
        (
            "container status",
            cri.runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: "abc".into(),
                    verbose: false,
                })
                .await
                .map(|_| ()),
        ),
        (
            "create in unknown pod",
            cri.runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: "abc".into(),
                    config: Some(husk_cri_tests::fixtures::shell_container(
                        "c", "busybox", "true",
                    )),
                    sandbox_config: None,
                })
                .await
                .map(|_| ()),
        ),
        (
            "exec",
            cri.runtime
                .exec(cri::ExecRequest::default())
                .await
                .map(|_| ()),
        ),
        (
            "run without metadata",
            cri.runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cri::PodSandboxConfig::default()),
                    runtime_handler: String::new(),
                })
                .await
                .map(|_| ()),
        ),
        (
            "unknown handler",
            cri.runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(pod_config("p", "/tmp")),
                    runtime_handler: "other".into(),
                })
                .await
                .map(|_| ()),
        ),
    ];
    let expected = [
        Code::NotFound,
        Code::NotFound,
        Code::NotFound,
        Code::Unimplemented,
        Code::InvalidArgument,
        Code::InvalidArgument,
    ];
    for ((what, result), code) in cases.into_iter().zip(expected) {
        let status = result.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
    }
    // Idempotent calls on unknown ids succeed.
    cri.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "abc".into(),
        })
        .await
        .unwrap();
    cri.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: "abc".into(),
        })
        .await
        .unwrap();
}

#[test]
fn a_bad_config_file_stops_the_daemon_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[vm]\ndefault_vcpus = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("default_vcpus"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// The daemon is SIGKILLed while RunPodSandbox waits for a VM: after the
/// restart the pod is listed NotReady, its VMM is gone, and it can be
/// removed without a trace.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_caught_booting_by_a_crash_comes_back_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = setup(dir.path(), None);
    // Stands in for a VMM whose guest never answers.
    let fake = dir.path().join("fake-vmm");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    setup.vmm = fake;
    setup.boot_timeout_secs = 600;
    let state_dir = setup.root.join("state/pods");
    let run_dir = setup.run_dir();
    let (mut daemon, cri) = Daemon::start(setup).await.unwrap();
    let mut runtime = cri.runtime.clone();
    let pending = tokio::spawn(async move {
        runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config("caught", "/tmp")),
                runtime_handler: "husk".into(),
            })
            .await
    });
    // Wait until the record names the VMM's pid.
    let mut vmm_pid = None;
    for _ in 0..200 {
        let records: Vec<serde_json::Value> = std::fs::read_dir(&state_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        vmm_pid = records
            .iter()
            .find_map(|r| r["vm"]["pid"].as_i64())
            .map(|p| p as i32);
        if vmm_pid.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let vmm_pid = vmm_pid.expect("the pod's record never named its VMM");
    assert!(Path::new(&format!("/proc/{vmm_pid}")).exists());

    let mut cri = daemon.restart().await.unwrap();
    let failed = pending.await.unwrap();
    assert!(
        failed.is_err(),
        "RunPodSandbox answered across a crash: {failed:?}"
    );
    let pods = cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    // The VMM was killed (it was the dead daemon's child: init reaps it).
    let mut gone = false;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{vmm_pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "the VMM of the interrupted pod still runs");
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pods[0].id.clone(),
        })
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(run_dir.join("pods"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(mounts_under(&run_dir).is_empty());
}

/// SIGTERM stops the daemon even while a client follows
/// GetContainerEvents (a stream that never ends on its own), and the
/// stream sees lifecycle events before that.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_daemon_with_an_event_stream_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, cri) = Daemon::start(setup(dir.path(), None)).await.unwrap();
    let mut client = cri.runtime.clone();
    let mut stream = client
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    // A pod that fails to boot is created and deleted: no event, since it
    // never became a pod the CRI client could see.
    let mut runtime = cri.runtime.clone();
    let _ = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("no-events", "/tmp")),
            runtime_handler: String::new(),
        })
        .await;
    let nothing =
        tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await;
    assert!(nothing.is_err(), "unexpected event: {nothing:?}");
    assert!(
        daemon.stop(),
        "the daemon did not exit on SIGTERM:\n{}",
        daemon.log_tail()
    );
}

/// A crash between starting a VMM and recording its pid leaves a VMM no
/// record names: the next start finds it by its socket under the run dir
/// and kills it, and the pod it was for is listed NotReady.
#[tokio::test(flavor = "multi_thread")]
async fn a_vmm_no_record_names_is_killed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = setup(dir.path(), None);
    // Named like the configured VMM, with its arguments on the command
    // line, as a real husk-vmm would be.
    let vmm_dir = dir.path().join("bin");
    std::fs::create_dir_all(&vmm_dir).unwrap();
    let fake = vmm_dir.join("husk-vmm");
    std::fs::write(&fake, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    setup.vmm = fake.clone();
    let run_dir = setup.run_dir();
    let pod_id = "0123456789abcdef".repeat(4);
    // The record as RunPodSandbox leaves it just before it records the VMM.
    let store = husk::state::StateStore::open(&setup.root.join("state")).unwrap();
    store
        .save_pod(&husk::state::PodRecord {
            id: pod_id.clone(),
            config: pod_config("stray", "/tmp"),
            runtime_handler: String::new(),
            created_at_ns: 1,
            state: husk::state::PodState::Creating,
            vm: None,
            sandbox_files: Default::default(),
        })
        .unwrap();
    let socket = run_dir.join("pods").join(&pod_id).join("vsock.sock");
    let mut stray = std::process::Command::new(&fake)
        .arg("--vsock-uds")
        .arg(&socket)
        .spawn()
        .unwrap();
    let (_daemon, mut cri) = Daemon::start(setup).await.unwrap();
    let mut killed = false;
    for _ in 0..100 {
        if stray.try_wait().unwrap().is_some() {
            killed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !killed {
        let _ = stray.kill();
    }
    assert!(killed, "the stray VMM survived the daemon's start");
    let pods = cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, pod_id);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
}
