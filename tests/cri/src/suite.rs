//! The end-to-end CRI suite: everything a kubelet does with a pod, plus a
//! daemon killed with SIGKILL in the middle, plus bad input. Runs where
//! KVM boots Linux (the rig's L1, or natively).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use k8s_cri::v1 as cri;
use tonic::Code;

use crate::client::Cri;
use crate::daemon::{mounts_under, vmm_processes_mentioning, Daemon, DaemonSetup};
use crate::fixtures::{pod_config, shell_container};
use crate::logs;

/// What the suite runs against.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub daemon: DaemonSetup,
    pub images: TestImageRefs,
    /// Pod log directories go here.
    pub logs: PathBuf,
}

/// The test images as pushed to the local registry.
#[derive(Debug, Clone)]
pub struct TestImageRefs {
    /// Three layers (gzip, zstd, plain), a whiteout and an opaque dir.
    pub multi: String,
    /// An index with linux/amd64 and linux/arm64.
    pub index: String,
    /// One layer.
    pub single: String,
}

/// The whole suite takes well under a minute in the rig; a hang must fail
/// with the daemon's log rather than wait for the rig's deadline.
const SUITE_DEADLINE: Duration = Duration::from_secs(600);

fn step(name: &str) {
    eprintln!("e2e: --- {name}");
}

/// Expects a gRPC error with `code`; returns its message.
fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    what: &str,
) -> anyhow::Result<String> {
    match result {
        Ok(reply) => bail!("{what}: expected {code:?}, got success {reply:?}"),
        Err(status) if status.code() == code => {
            ensure!(
                !status.message().is_empty(),
                "{what}: {code:?} without a message"
            );
            eprintln!("e2e: {what}: {code:?}: {}", status.message());
            Ok(status.message().to_string())
        }
        Err(status) => bail!(
            "{what}: expected {code:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

pub async fn pull(cri: &mut Cri, image: &str) -> anyhow::Result<String> {
    let reply = cri
        .images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("PullImage {image}"))?;
    Ok(reply.into_inner().image_ref)
}

pub async fn run_pod(cri: &mut Cri, config: cri::PodSandboxConfig) -> anyhow::Result<String> {
    let reply = cri
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "husk".into(),
        })
        .await
        .context("RunPodSandbox")?;
    Ok(reply.into_inner().pod_sandbox_id)
}

pub async fn create(
    cri: &mut Cri,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<tonic::Response<cri::CreateContainerResponse>, tonic::Status> {
    cri.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
}

pub async fn create_and_start(
    cri: &mut Cri,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> anyhow::Result<String> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = create(cri, pod, pod_config, config)
        .await
        .with_context(|| format!("CreateContainer {name}"))?
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .with_context(|| format!("StartContainer {name}"))?;
    Ok(id)
}

pub async fn container_status(cri: &mut Cri, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    cri.runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .with_context(|| format!("ContainerStatus {id}"))?
        .into_inner()
        .status
        .context("ContainerStatus without a status")
}

pub async fn wait_exited(
    cri: &mut Cri,
    id: &str,
    deadline: Duration,
) -> anyhow::Result<cri::ContainerStatus> {
    let until = Instant::now() + deadline;
    loop {
        let status = container_status(cri, id).await?;
        if status.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(status);
        }
        ensure!(
            Instant::now() < until,
            "container {id} still {:?} after {deadline:?}",
            status.state()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the log file holds a full stdout line containing `needle`.
pub async fn wait_log_line(
    path: &Path,
    needle: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<logs::LogRecord>> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(records) = logs::read(path) {
            if logs::lines(&records, "stdout")
                .iter()
                .any(|l| l.contains(needle))
            {
                return Ok(records);
            }
        }
        ensure!(
            Instant::now() < until,
            "no line with {needle:?} in {} after {deadline:?}: {:?}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn exec(
    cri: &mut Cri,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    cri.runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

async fn exec_stdout(cri: &mut Cri, id: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let out = exec(cri, id, cmd, 60)
        .await
        .with_context(|| format!("ExecSync {cmd:?}"))?;
    ensure!(
        out.exit_code == 0,
        "ExecSync {cmd:?} exited {}: {}",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn list_pods(
    cri: &mut Cri,
    filter: Option<cri::PodSandboxFilter>,
) -> anyhow::Result<Vec<cri::PodSandbox>> {
    Ok(cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
        .await?
        .into_inner()
        .items)
}

async fn list_containers(cri: &mut Cri, pod: &str) -> anyhow::Result<Vec<cri::Container>> {
    Ok(cri
        .runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers)
}

async fn pod_state(cri: &mut Cri, id: &str) -> anyhow::Result<i32> {
    Ok(cri
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .with_context(|| format!("PodSandboxStatus {id}"))?
        .into_inner()
        .status
        .context("no status")?
        .state)
}

/// What GetContainerEvents delivered, collected in the background.
struct EventLog {
    events: std::sync::Arc<std::sync::Mutex<Vec<(String, i32)>>>,
}

impl EventLog {
    async fn follow(cri: &Cri) -> anyhow::Result<EventLog> {
        let mut client = cri.runtime.clone();
        let mut stream = client
            .get_container_events(cri::GetEventsRequest {})
            .await
            .context("GetContainerEvents")?
            .into_inner();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                sink.lock()
                    .unwrap()
                    .push((event.container_id, event.container_event_type));
            }
        });
        Ok(EventLog { events })
    }

    /// The event types seen for `id`, in order.
    fn kinds(&self, id: &str) -> Vec<i32> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, k)| *k)
            .collect()
    }

    /// Waits until `id`'s events are exactly `expected`.
    async fn expect(&self, id: &str, expected: &[cri::ContainerEventType]) -> anyhow::Result<()> {
        let expected: Vec<i32> = expected.iter().map(|k| *k as i32).collect();
        let until = Instant::now() + Duration::from_secs(10);
        while self.kinds(id) != expected {
            ensure!(
                Instant::now() < until,
                "events of {id}: {:?}, expected {expected:?}",
                self.kinds(id)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The whole suite; prints a summary line starting `cri-e2e ok` at the end.
pub async fn run(inputs: &Inputs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut daemon, mut cri) = Daemon::start(inputs.daemon.clone()).await?;
    let result = tokio::time::timeout(SUITE_DEADLINE, run_steps(inputs, &mut daemon, &mut cri))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the suite did not finish within {SUITE_DEADLINE:?}"
            ))
        });
    if result.is_err() {
        eprintln!("e2e: daemon log tail:\n{}", daemon.log_tail());
        for pod_dir in std::fs::read_dir(inputs.daemon.run_dir().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for file in ["vmm.log", "console.log"] {
                let text = std::fs::read_to_string(pod_dir.path().join(file)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "e2e: {}/{file}:\n{}",
                    pod_dir.path().display(),
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
    result?;
    ensure!(
        daemon.stop(),
        "the daemon did not exit within {:?} of SIGTERM:\n{}",
        crate::daemon::STOP_WAIT,
        daemon.log_tail()
    );
    println!("cri-e2e ok total_ms={}", started.elapsed().as_millis());
    Ok(())
}

async fn run_steps(inputs: &Inputs, daemon: &mut Daemon, cri: &mut Cri) -> anyhow::Result<()> {
    let images = &inputs.images;
    step("Version, Status, RuntimeConfig");
    let version = cri
        .runtime
        .version(cri::VersionRequest::default())
        .await?
        .into_inner();
    ensure!(
        version.runtime_name == "husk" && version.runtime_api_version == "v1",
        "{version:?}"
    );
    let status = cri
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let conditions = status.status.context("no runtime status")?.conditions;
    ensure!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status),
        "{conditions:?}"
    );
    ensure!(
        conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && !c.status && !c.reason.is_empty()),
        "{conditions:?}"
    );
    let rc = cri
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await?
        .into_inner();
    ensure!(rc.linux.is_some(), "RuntimeConfig without linux");
    expect_code(
        cri.runtime.exec(cri::ExecRequest::default()).await,
        Code::Unimplemented,
        "Exec",
    )?;
    expect_code(
        cri.runtime.attach(cri::AttachRequest::default()).await,
        Code::Unimplemented,
        "Attach",
    )?;
    expect_code(
        cri.runtime
            .port_forward(cri::PortForwardRequest::default())
            .await,
        Code::Unimplemented,
        "PortForward",
    )?;

    step("images: pull, list, status, fs info");
    let multi_id = pull(cri, &images.multi).await?;
    let index_id = pull(cri, &images.index).await?;
    let single_id = pull(cri, &images.single).await?;
    ensure!(
        pull(cri, &images.multi).await? == multi_id,
        "a second pull changed the id"
    );
    let listed = cri
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    for (name, id) in [
        (&images.multi, &multi_id),
        (&images.index, &index_id),
        (&images.single, &single_id),
    ] {
        let image = listed
            .iter()
            .find(|i| &i.id == id)
            .with_context(|| format!("{name} not listed: {listed:?}"))?;
        ensure!(
            image.repo_tags.iter().any(|t| t == name),
            "{name}: tags {:?}",
            image.repo_tags
        );
        ensure!(
            image.repo_digests.iter().all(|d| d.contains("@sha256:"))
                && !image.repo_digests.is_empty(),
            "{name}: digests {:?}",
            image.repo_digests
        );
        ensure!(image.size > 500_000, "{name}: size {}", image.size);
    }
    let status = cri
        .images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: images.multi.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(
        status.image.as_ref().is_some_and(|i| i.id == multi_id),
        "ImageStatus: {status:?}"
    );
    let missing = cri
        .images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "127.0.0.1:1/none:latest".into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(
        missing.image.is_none(),
        "ImageStatus of a missing image: {missing:?}"
    );
    let fs = cri
        .images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    ensure!(
        fs.image_filesystems
            .first()
            .and_then(|f| f.used_bytes.as_ref())
            .is_some_and(|u| u.value > 0),
        "ImageFsInfo: {fs:?}"
    );

    step("bad input: images and ids");
    let registry = images
        .multi
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    expect_code(
        cri.images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: format!("{registry}/husk-test/nothing:here"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "pull of an unknown image",
    )?;
    expect_code(
        cri.images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: "UPPER/Case::bad@@".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "pull of a malformed reference",
    )?;
    expect_code(
        cri.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: "f00d".into(),
                verbose: false,
            })
            .await,
        Code::NotFound,
        "status of an unknown pod",
    )?;
    expect_code(
        cri.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: "f00d".into(),
                verbose: false,
            })
            .await,
        Code::NotFound,
        "status of an unknown container",
    )?;
    expect_code(
        cri.runtime
            .start_container(cri::StartContainerRequest {
                container_id: "f00d".into(),
            })
            .await,
        Code::NotFound,
        "start of an unknown container",
    )?;
    expect_code(
        cri.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: "f00d".into(),
                cmd: vec!["true".into()],
                timeout: 1,
            })
            .await,
        Code::NotFound,
        "exec in an unknown container",
    )?;
    cri.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: "f00d".into(),
        })
        .await
        .context("StopPodSandbox of an unknown pod must succeed")?;
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: "f00d".into(),
        })
        .await
        .context("RemovePodSandbox of an unknown pod must succeed")?;
    cri.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: "f00d".into(),
        })
        .await
        .context("RemoveContainer of an unknown container must succeed")?;
    let nowhere = pod_config("nowhere", "/tmp");
    expect_code(
        create(
            cri,
            "f00d",
            &nowhere,
            shell_container("x", &images.single, "true"),
        )
        .await,
        Code::NotFound,
        "create in an unknown pod",
    )?;

    let events = EventLog::follow(cri).await?;
    step("a pod: RunPodSandbox, status, list");
    let log_dir = inputs.logs.join("pod-a");
    std::fs::create_dir_all(&log_dir)?;
    let pod_a_config = pod_config("pod-a", &log_dir.display().to_string());
    let t = Instant::now();
    let pod_a = run_pod(cri, pod_a_config.clone()).await?;
    eprintln!("e2e: pod-a ready in {} ms", t.elapsed().as_millis());
    ensure!(
        pod_state(cri, &pod_a).await? == cri::PodSandboxState::SandboxReady as i32,
        "pod-a not ready"
    );
    let by_label = list_pods(
        cri,
        Some(cri::PodSandboxFilter {
            label_selector: [("pod".to_string(), "pod-a".to_string())].into(),
            ..Default::default()
        }),
    )
    .await?;
    ensure!(
        by_label.len() == 1 && by_label[0].id == pod_a,
        "label filter: {by_label:?}"
    );
    let short = &pod_a[..12];
    ensure!(
        pod_state(cri, short).await? == cri::PodSandboxState::SandboxReady as i32,
        "lookup by id prefix"
    );
    expect_code(
        cri.runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_a_config.clone()),
                runtime_handler: "husk".into(),
            })
            .await,
        Code::AlreadyExists,
        "a second pod with the same name",
    )?;
    expect_code(
        cri.runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config("pod-x", "/tmp")),
                runtime_handler: "nope".into(),
            })
            .await,
        Code::InvalidArgument,
        "an unknown runtime handler",
    )?;
    ensure!(
        list_pods(cri, None).await?.len() == 1,
        "bad RunPodSandbox calls left pods behind"
    );

    step("a container that prints and exits; its log; the image's layers");
    let hello_script = "echo hello from a husk microVM; cat /husk/hello; echo; ls /husk | tr '\\n' ' '; echo; ls /husk/dir | tr '\\n' ' '; echo; echo to-stderr >&2; printf no-newline";
    let hello = create_and_start(
        cri,
        &pod_a,
        &pod_a_config,
        shell_container("hello", &images.multi, hello_script),
    )
    .await?;
    let status = wait_exited(cri, &hello, Duration::from_secs(60)).await?;
    use cri::ContainerEventType as Event;
    events
        .expect(
            &pod_a,
            &[Event::ContainerCreatedEvent, Event::ContainerStartedEvent],
        )
        .await?;
    events
        .expect(
            &hello,
            &[
                Event::ContainerCreatedEvent,
                Event::ContainerStartedEvent,
                Event::ContainerStoppedEvent,
            ],
        )
        .await?;
    ensure!(
        status.exit_code == 0 && status.reason == "Completed",
        "hello: {status:?}"
    );
    ensure!(
        status.started_at > 0 && status.finished_at >= status.started_at && status.created_at > 0,
        "timestamps: {status:?}"
    );
    ensure!(
        status
            .image
            .as_ref()
            .is_some_and(|i| i.image == images.multi)
            && status.image_ref == multi_id,
        "image: {status:?}"
    );
    let hello_log = log_dir.join("hello.log");
    ensure!(
        status.log_path == hello_log.display().to_string(),
        "log path {:?}",
        status.log_path
    );
    let records = wait_log_line(&hello_log, "no-newline", Duration::from_secs(10)).await?;
    let out = logs::lines(&records, "stdout");
    ensure!(
        out.first().map(String::as_str) == Some("hello from a husk microVM"),
        "stdout: {out:?}"
    );
    ensure!(
        out.get(1).map(String::as_str) == Some("hello from a husk microVM"),
        "/husk/hello: {out:?}"
    );
    let listing = out.get(2).cloned().unwrap_or_default();
    ensure!(
        listing.contains("kept") && !listing.contains("removed"),
        "whiteout not applied: /husk has {listing:?}"
    );
    let dir_listing = out.get(3).cloned().unwrap_or_default();
    ensure!(
        dir_listing.trim() == "b",
        "opaque dir not applied: /husk/dir has {dir_listing:?}"
    );
    ensure!(
        logs::lines(&records, "stderr") == vec!["to-stderr"],
        "stderr: {records:?}"
    );
    let last = records
        .iter()
        .rfind(|r| r.stream == "stdout")
        .context("no stdout")?;
    ensure!(
        last.tag == "P" && last.text == "no-newline",
        "the unfinished line must be P: {last:?}"
    );

    step("bad input: containers");
    expect_code(
        create(
            cri,
            &pod_a,
            &pod_a_config,
            shell_container("hello", &images.multi, "true"),
        )
        .await,
        Code::AlreadyExists,
        "a duplicate container name",
    )?;
    expect_code(
        create(
            cri,
            &pod_a,
            &pod_a_config,
            shell_container("x1", "127.0.0.1:1/not/pulled:1", "true"),
        )
        .await,
        Code::NotFound,
        "an image that is not pulled",
    )?;
    let mut bad_log = shell_container("x2", &images.multi, "true");
    bad_log.log_path = "../escape.log".into();
    expect_code(
        create(cri, &pod_a, &pod_a_config, bad_log).await,
        Code::InvalidArgument,
        "a log path leaving the log directory",
    )?;
    let mut huge = shell_container("x3", &images.multi, "true");
    huge.annotations.insert("huge".into(), "x".repeat(2 << 20));
    let huge_result = create(cri, &pod_a, &pod_a_config, huge).await;
    let code = huge_result.as_ref().err().map(|s| s.code());
    ensure!(
        matches!(
            code,
            Some(Code::InvalidArgument) | Some(Code::ResourceExhausted) | Some(Code::OutOfRange)
        ),
        "a 2 MiB container config: {huge_result:?}"
    );
    let mut bad_mount = shell_container("x4", &images.multi, "true");
    bad_mount.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/husk".into(),
        ..Default::default()
    });
    expect_code(
        create(cri, &pod_a, &pod_a_config, bad_mount).await,
        Code::InvalidArgument,
        "a mount of a missing host path",
    )?;
    let names: Vec<String> = list_containers(cri, &pod_a)
        .await?
        .iter()
        .filter_map(|c| c.metadata.as_ref().map(|m| m.name.clone()))
        .collect();
    ensure!(
        names == vec!["hello".to_string()],
        "bad creates left containers behind: {names:?}"
    );

    step("two running containers share the pod's VM; ExecSync; stats; update");
    let sleeper_script = "trap '' TERM; cat /husk/arch; echo; while true; do sleep 1; done";
    let sleeper = create_and_start(
        cri,
        &pod_a,
        &pod_a_config,
        shell_container("sleeper", &images.index, sleeper_script),
    )
    .await?;
    // The ticker's rootfs is read-only (CRI readonly_rootfs).
    let mut ticker_config = shell_container(
        "ticker",
        &images.single,
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done",
    );
    ticker_config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ticker = create_and_start(cri, &pod_a, &pod_a_config, ticker_config).await?;
    wait_log_line(
        &log_dir.join("sleeper.log"),
        "amd64",
        Duration::from_secs(30),
    )
    .await?;
    wait_log_line(
        &log_dir.join("ticker.log"),
        "tick 1",
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        exec_stdout(cri, &sleeper, &["cat", "/husk/arch"]).await? == "amd64",
        "the index did not resolve to amd64"
    );
    let boot_a = exec_stdout(cri, &sleeper, &["cat", "/proc/sys/kernel/random/boot_id"]).await?;
    let boot_b = exec_stdout(cri, &ticker, &["cat", "/proc/sys/kernel/random/boot_id"]).await?;
    ensure!(
        boot_a == boot_b && !boot_a.is_empty(),
        "containers of one pod must share its VM: {boot_a} vs {boot_b}"
    );
    ensure!(
        exec_stdout(cri, &sleeper, &["hostname"]).await? == "pod-a",
        "hostname"
    );
    let writable = exec(cri, &sleeper, &["touch", "/written"], 30).await?;
    ensure!(
        writable.exit_code == 0,
        "the sleeper's rootfs must be writable: {writable:?}"
    );
    let readonly = exec(cri, &ticker, &["touch", "/written"], 30).await?;
    ensure!(
        readonly.exit_code != 0 && String::from_utf8_lossy(&readonly.stderr).contains("Read-only"),
        "readonly_rootfs not honored: {readonly:?}"
    );
    volumes(cri, &pod_a, &pod_a_config, &images.single, &inputs.logs).await?;
    ensure!(
        exec_stdout(cri, &sleeper, &["sh", "-c", "echo $HUSK_E2E"]).await? == "sleeper",
        "env"
    );
    let code = exec(
        cri,
        &sleeper,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        30,
    )
    .await?;
    ensure!(
        code.exit_code == 3 && code.stdout == b"out\n" && code.stderr == b"err\n",
        "ExecSync: {code:?}"
    );
    let t = Instant::now();
    expect_code(
        cri.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: sleeper.clone(),
                cmd: vec!["sleep".into(), "30".into()],
                timeout: 1,
            })
            .await,
        Code::DeadlineExceeded,
        "an ExecSync past its timeout",
    )?;
    ensure!(
        t.elapsed() < Duration::from_secs(20),
        "the exec timeout took {:?}",
        t.elapsed()
    );
    let stats = cri
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: sleeper.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    ensure!(
        stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .is_some_and(|w| w.value > 0),
        "stats: {stats:?}"
    );
    ensure!(
        stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .is_some(),
        "stats: {stats:?}"
    );
    let all = cri
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await?
        .into_inner()
        .stats;
    ensure!(
        all.len() == 2,
        "ListContainerStats of the two running containers: {}",
        all.len()
    );
    let pod_stats = cri
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_a.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no pod stats")?;
    ensure!(
        pod_stats
            .linux
            .as_ref()
            .is_some_and(|l| l.containers.len() == 2 && l.memory.is_some()),
        "pod stats: {pod_stats:?}"
    );
    let listed_pod_stats = cri
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
        .await?
        .into_inner()
        .stats;
    ensure!(
        listed_pod_stats.len() == 1,
        "ListPodSandboxStats: {}",
        listed_pod_stats.len()
    );
    cri.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: sleeper.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("UpdateContainerResources")?;
    ensure!(
        exec_stdout(cri, &sleeper, &["cat", "/sys/fs/cgroup/memory.max"]).await?
            == (96u64 << 20).to_string(),
        "memory.max not updated"
    );
    ensure!(
        exec_stdout(cri, &sleeper, &["cat", "/sys/fs/cgroup/cpu.max"]).await? == "50000 100000",
        "cpu.max not updated"
    );

    step("ReopenContainerLog after rotation");
    let ticker_log = log_dir.join("ticker.log");
    let rotated = log_dir.join("ticker.log.1");
    std::fs::rename(&ticker_log, &rotated)?;
    cri.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .context("ReopenContainerLog")?;
    wait_log_line(&ticker_log, "tick", Duration::from_secs(10)).await?;
    expect_code(
        cri.runtime
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: hello.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "reopening an exited container's log",
    )?;

    step("kill -9 the daemon; a second pod's VM dies while it is down; restart");
    let log_b = inputs.logs.join("pod-b");
    std::fs::create_dir_all(&log_b)?;
    let pod_b_config = pod_config("pod-b", &log_b.display().to_string());
    let pod_b = run_pod(cri, pod_b_config.clone()).await?;
    let doomed = create_and_start(
        cri,
        &pod_b,
        &pod_b_config,
        shell_container("doomed", &images.single, "while true; do sleep 1; done"),
    )
    .await?;
    daemon.kill9();
    let vmm_b = vmm_processes_mentioning(&format!("pods/{pod_b}/vsock.sock"));
    ensure!(vmm_b.len() == 1, "pod-b's VMM: {vmm_b:?}");
    // SAFETY: kill(2).
    unsafe { libc::kill(vmm_b[0] as i32, libc::SIGKILL) };
    let ticks_before = logs::lines(&logs::read(&ticker_log)?, "stdout").len();
    *cri = daemon.restart().await?;
    let pods = list_pods(cri, None).await?;
    ensure!(pods.len() == 2, "pods after restart: {pods:?}");
    ensure!(
        pod_state(cri, &pod_a).await? == cri::PodSandboxState::SandboxReady as i32,
        "pod-a must be Ready after the restart"
    );
    ensure!(
        pod_state(cri, &pod_b).await? == cri::PodSandboxState::SandboxNotready as i32,
        "pod-b's VM died: it must be NotReady"
    );
    let doomed_status = container_status(cri, &doomed).await?;
    ensure!(
        doomed_status.state == cri::ContainerState::ContainerExited as i32,
        "pod-b's container: {doomed_status:?}"
    );
    let hello_status = container_status(cri, &hello).await?;
    ensure!(
        hello_status.state == cri::ContainerState::ContainerExited as i32
            && hello_status.exit_code == 0,
        "hello after restart: {hello_status:?}"
    );
    ensure!(
        container_status(cri, &sleeper).await?.state
            == cri::ContainerState::ContainerRunning as i32,
        "sleeper after restart"
    );
    ensure!(
        exec_stdout(cri, &sleeper, &["cat", "/husk/arch"]).await? == "amd64",
        "ExecSync after the restart"
    );
    let until = Instant::now() + Duration::from_secs(20);
    while logs::lines(&logs::read(&ticker_log)?, "stdout").len() <= ticks_before + 2 {
        ensure!(
            Instant::now() < until,
            "the ticker's log stopped after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_b.clone(),
        })
        .await
        .context("RemovePodSandbox pod-b")?;

    let events = EventLog::follow(cri).await?;
    step("StopContainer: SIGTERM ignored, killed after the timeout");
    let t = Instant::now();
    cri.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 2,
        })
        .await
        .context("StopContainer")?;
    let waited = t.elapsed();
    let status = container_status(cri, &sleeper).await?;
    ensure!(
        status.state == cri::ContainerState::ContainerExited as i32 && status.exit_code == 137,
        "sleeper: {status:?}"
    );
    ensure!(
        waited >= Duration::from_secs(2),
        "StopContainer returned after {waited:?}, before its timeout"
    );
    events
        .expect(&sleeper, &[Event::ContainerStoppedEvent])
        .await?;
    cri.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 2,
        })
        .await
        .context("stopping a stopped container")?;
    expect_code(
        cri.runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: sleeper.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await,
        Code::FailedPrecondition,
        "exec in an exited container",
    )?;
    cri.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: hello.clone(),
        })
        .await
        .context("RemoveContainer")?;
    events
        .expect(&hello, &[Event::ContainerDeletedEvent])
        .await?;
    ensure!(
        list_containers(cri, &pod_a).await?.len() == 2,
        "hello not removed"
    );

    step("remove everything; nothing left behind");
    expect_code(
        cri.images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: images.single.clone(),
                    ..Default::default()
                }),
            })
            .await,
        Code::FailedPrecondition,
        "removing an image a container uses",
    )?;
    cri.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_a.clone(),
        })
        .await
        .context("StopPodSandbox")?;
    eprintln!("e2e: pod-a stopped");
    ensure!(
        pod_state(cri, &pod_a).await? == cri::PodSandboxState::SandboxNotready as i32,
        "stopped pod must be NotReady"
    );
    let ticker_status = container_status(cri, &ticker).await?;
    ensure!(
        ticker_status.state == cri::ContainerState::ContainerExited as i32,
        "ticker after StopPodSandbox: {ticker_status:?}"
    );
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_a.clone(),
        })
        .await
        .context("RemovePodSandbox")?;
    cri.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_a.clone(),
        })
        .await
        .context("RemovePodSandbox twice")?;
    eprintln!("e2e: pod-a removed");
    ensure!(list_pods(cri, None).await?.is_empty(), "pods left");
    ensure!(
        cri.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .is_empty(),
        "containers left"
    );
    let run_dir = inputs.daemon.run_dir();
    let vmms = vmm_processes_mentioning(&run_dir.display().to_string());
    ensure!(vmms.is_empty(), "VMM processes left: {vmms:?}");
    let mounts = mounts_under(&run_dir);
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let folders: Vec<_> = std::fs::read_dir(run_dir.join("pods"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    ensure!(folders.is_empty(), "pod folders left: {folders:?}");
    cri.images
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: images.index.clone(),
                ..Default::default()
            }),
        })
        .await
        .context("RemoveImage")?;
    let listed = cri
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    ensure!(
        !listed.iter().any(|i| i.id == index_id) && listed.len() == 2,
        "after RemoveImage: {listed:?}"
    );
    Ok(())
}

/// Read-only volumes: the volume refuses writes, a host mount inside it
/// keeps its own write access unless the mount is recursively read-only
/// (critest's "non-recursive readonly mounts" and "recursive readonly
/// mounts"), and a writable volume is written through to the host.
async fn volumes(
    cri: &mut Cri,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    scratch: &std::path::Path,
) -> anyhow::Result<()> {
    step("volumes: read-only, recursively read-only, writable; a host mount inside");
    let host = scratch.join("volume");
    let inner = host.join("tmpfs");
    std::fs::create_dir_all(&inner)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&inner)
        .status()?;
    ensure!(
        mounted.success(),
        "mount a tmpfs at {}: {mounted}",
        inner.display()
    );
    let result = volume_checks(cri, pod, pod_config, image, &host).await;
    let _ = std::process::Command::new("umount").arg(&inner).status();
    result
}

async fn volume_checks(
    cri: &mut Cri,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    host: &std::path::Path,
) -> anyhow::Result<()> {
    let mut config = shell_container("volumes", image, "while true; do sleep 1; done");
    for (path, readonly, recursive) in [
        ("/ro", true, false),
        ("/rro", true, true),
        ("/rw", false, false),
    ] {
        config.mounts.push(cri::Mount {
            container_path: path.into(),
            host_path: host.display().to_string(),
            readonly,
            recursive_read_only: recursive,
            ..Default::default()
        });
    }
    let id = create_and_start(cri, pod, pod_config, config).await?;
    for (file, writable) in [
        ("/ro/f", false),
        ("/ro/tmpfs/ro", true),
        ("/rro/f", false),
        ("/rro/tmpfs/rro", false),
        ("/rw/tmpfs/rw", true),
    ] {
        let touched = exec(cri, &id, &["touch", file], 30).await?;
        let refused = String::from_utf8_lossy(&touched.stderr).contains("Read-only file system");
        ensure!(
            if writable {
                touched.exit_code == 0
            } else {
                touched.exit_code != 0 && refused
            },
            "touch {file} should {}: {touched:?}",
            if writable { "work" } else { "fail with EROFS" }
        );
    }
    for (file, present) in [
        ("tmpfs/ro", true),
        ("tmpfs/rw", true),
        ("tmpfs/rro", false),
        ("f", false),
    ] {
        ensure!(
            host.join(file).exists() == present,
            "{file} on the host: expected present={present}"
        );
    }
    cri.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
    cri.runtime
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await?;
    Ok(())
}
