//! The runtime's state machine against fakes, without KVM: pods' VMs are
//! [`FakeVms`] (an in-memory agent per pod on a unix socket), the image
//! store holds a layerless image written straight into its folder. Each
//! test drives the runtime as the CRI server does, and a restart is a new
//! runtime over the same folders and the same fake VMs.

mod containers;
mod exits;
mod pods;
mod recovery;

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, PodSandboxConfig, PodSandboxMetadata,
};

use super::{LifecycleEvent, LifecycleKind, Runtime};
use crate::config::Config;
use crate::image::{ImageStore, RegistryOptions};
use crate::state::{ContainerRecord, PodRecord};
use crate::vm::fake::{FakeVm, FakeVms};

/// The image every test container uses.
pub const IMAGE: &str = "example.com/fake/busybox:1";
const IMAGE_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub vms: FakeVms,
    pub runtime: Option<Arc<Runtime>>,
}

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            state_dir: dir.path().join("state"),
            image_dir: dir.path().join("images"),
            run_dir: dir.path().join("run"),
            ..Default::default()
        };
        config.vm.boot_timeout_secs = 5;
        write_image(&config.image_dir);
        let vms = FakeVms::new();
        let runtime = Some(start(&config, &vms).await);
        Harness {
            dir,
            config,
            vms,
            runtime,
        }
    }

    /// The daemon stops (its runtime is dropped) and starts again over the
    /// same records, folders and VMs.
    pub async fn restart(&mut self) {
        self.stop_daemon().await;
        self.start_daemon().await;
    }

    /// Drops the runtime as a stopping daemon does. Nothing else may keep
    /// it: tasks hold it weakly (a task may upgrade for the moment it
    /// handles an event, so this waits a little), and its VMs must outlive
    /// it untouched.
    pub async fn stop_daemon(&mut self) {
        let runtime = self.runtime.take().expect("the daemon runs");
        let weak = Arc::downgrade(&runtime);
        drop(runtime);
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while weak.strong_count() > 0 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(weak.strong_count(), 0, "something still holds the runtime");
    }

    pub async fn start_daemon(&mut self) {
        self.runtime = Some(start(&self.config, &self.vms).await);
    }

    /// The running daemon's runtime.
    pub fn rt(&self) -> &Arc<Runtime> {
        self.runtime.as_ref().expect("the daemon runs")
    }

    /// Runs a Ready pod named `name`.
    pub async fn pod(&self, name: &str) -> String {
        self.rt()
            .run_pod(pod_config(name), String::new())
            .await
            .unwrap()
    }

    /// Creates (not starts) container `name` in `pod`.
    pub async fn container(&self, pod: &str, name: &str) -> String {
        self.rt()
            .create_container(pod, container_config(name))
            .await
            .unwrap()
    }

    /// Creates and starts container `name` in `pod`.
    pub async fn running(&self, pod: &str, name: &str) -> String {
        let id = self.container(pod, name).await;
        self.rt().start_container(&id).await.unwrap();
        id
    }

    pub fn vm(&self, pod: &str) -> FakeVm {
        self.vms.vm(pod).expect("the pod has a VM")
    }

    pub fn pod_record(&self, id: &str) -> PodRecord {
        self.rt().pod(id).unwrap().record()
    }

    pub fn container_record(&self, id: &str) -> ContainerRecord {
        self.rt().container(id).unwrap().record()
    }

    /// Waits until `check` holds for the container's record.
    pub async fn until_container(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&ContainerRecord) -> bool,
    ) -> ContainerRecord {
        for _ in 0..500 {
            let record = self.container_record(id);
            if check(&record) {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "container {id}: never {what}: {:?}",
            self.container_record(id)
        );
    }

    pub fn pod_folder(&self, id: &str) -> std::path::PathBuf {
        self.config.run_dir.join("pods").join(id)
    }

    pub fn records_on_disk(&self) -> (usize, usize) {
        let count = |sub: &str| {
            std::fs::read_dir(self.config.state_dir.join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        (count("pods"), count("containers"))
    }
}

async fn start(config: &Config, vms: &FakeVms) -> Arc<Runtime> {
    let images = ImageStore::open(&config.image_dir, RegistryOptions::default()).unwrap();
    Runtime::start_with(config.clone(), Arc::new(images), Arc::new(vms.clone()))
        .await
        .unwrap()
}

/// A layerless image in the store's own on-disk form: the index and the
/// config blob it names.
fn write_image(image_dir: &std::path::Path) {
    let blobs = image_dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(IMAGE_HEX), b"{}").unwrap();
    let index = serde_json::json!({
        "version": 1,
        "images": [{
            "image": {
                "id": format!("sha256:{IMAGE_HEX}"),
                "repo_tags": [IMAGE],
                "repo_digests": [],
                "size": 0,
                "config": {
                    "user": null, "env": ["PATH=/bin"], "entrypoint": [], "cmd": ["sh"],
                    "working_dir": null, "labels": {}, "stop_signal": null
                },
                "layers": []
            },
            "manifest_digest": format!("sha256:{IMAGE_HEX}"),
            "layer_blobs": []
        }]
    });
    std::fs::write(image_dir.join("images.json"), index.to_string()).unwrap();
}

pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

pub fn container_config(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into()],
        ..Default::default()
    }
}

/// The events received so far.
pub fn drain(
    events: &mut tokio::sync::broadcast::Receiver<LifecycleEvent>,
) -> Vec<(String, LifecycleKind)> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push((event.id, event.kind));
    }
    seen
}
