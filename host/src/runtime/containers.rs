//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! UpdateContainerResources, ReopenContainerLog.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use husk_agent_client::{AgentClient, ProcessRef, SignalScope};
use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};
use oci_spec::runtime::{Process, Spec};
use prost::Message;

use super::error::{AgentResultExt, Result, RuntimeError};
use super::ids::new_id;
use super::{io, now_ns, Container, LifecycleKind, Pod, Runtime};
use crate::deadlines::{CONTAINER_DELETE, CONTAINER_KILL};
use crate::image::Image;
use crate::logs::validate_log_path;
use crate::spec::{self, MountSource, SpecInput, Submount};
use crate::state::{ContainerRecord, ContainerState, PodState};
use crate::vm::{bind, mounts_below, unmount_under, Access, VmLayout};

/// A container config bigger than this is refused (the agent takes at
/// most 1 MiB of OCI spec).
pub const MAX_CONTAINER_CONFIG_BYTES: usize = 512 * 1024;

/// What CreateContainer hands the agent, and keeps for ExecSync.
struct Prepared {
    layers: Vec<String>,
    spec: Spec,
    process: Process,
}

impl Runtime {
    pub async fn create_container(
        self: &Arc<Self>,
        pod_id: &str,
        config: ContainerConfig,
    ) -> Result<String> {
        let pod = self.pod(pod_id)?;
        let _op = pod.op.lock().await;
        let pod_record = pod.record();
        if pod_record.state != PodState::Ready {
            return Err(RuntimeError::wrong_state(
                "pod sandbox",
                &pod.id,
                "is not ready",
            ));
        }
        let agent = pod.agent().ok_or_else(|| {
            RuntimeError::wrong_state("pod sandbox", &pod.id, "has no running VM")
        })?;
        check_container_config(&config)?;
        let meta = config.metadata.clone().unwrap_or_default();
        if let Some(other) = self
            .pod_containers(&pod.id)
            .into_iter()
            .find(|c| c.record().config.metadata.as_ref() == Some(&meta))
        {
            return Err(RuntimeError::AlreadyExists {
                what: format!(
                    "container name {:?} (attempt {}) in pod {}",
                    meta.name, meta.attempt, pod.id
                ),
                kind: "container",
                owner: other.id.clone(),
            });
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self
            .images
            .get(&image_name)?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "image (pull it first)",
                id: image_name.clone(),
            })?;
        let log_path = validate_log_path(&pod_record.config.log_directory, &config.log_path)
            .map_err(|e| RuntimeError::invalid("log_path", e.to_string()))?;
        let writer = io::open_log(log_path.as_deref())?;

        let id = new_id();
        let layout = self.layout(&pod);
        let prepared = self.prepare_container(&id, &pod, &layout, &config, &image);
        let Prepared {
            layers,
            spec,
            process,
        } = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                let _ = unmount_under(&layout.container_mounts_dir(&id));
                return Err(error);
            }
        };
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config,
            image_ref: image_name,
            image_id: image.id.clone(),
            log_path,
            process,
            state: ContainerState::Created,
            created_at_ns: now_ns(),
            started_at_ns: 0,
            exit: None,
        };
        // On disk first: a crash from here on leaves a record recovery
        // reconciles with the agent.
        self.store.save_container(&record)?;
        let container = Container::new(record);
        let created = agent
            .create_container(&id, &spec, &layers, false)
            .await
            .doing("create the container");
        if let Err(error) = created {
            let _ = self.store.remove_container(&id);
            let _ = unmount_under(&layout.container_mounts_dir(&id));
            return Err(error);
        }
        self.tables
            .lock()
            .unwrap()
            .containers
            .insert(id.clone(), container.clone());
        io::start_pump(&container, agent, writer);
        self.emit(&id, &pod.id, LifecycleKind::Created);
        tracing::info!(container = %id, pod = %pod.id, name = %meta.name, "container created");
        Ok(id)
    }

    /// Shares the image layers and the container's host paths with the
    /// guest and builds the OCI spec.
    fn prepare_container(
        &self,
        id: &str,
        pod: &Pod,
        layout: &VmLayout,
        config: &ContainerConfig,
        image: &Image,
    ) -> Result<Prepared> {
        let mount_err = |source| RuntimeError::Mount {
            action: "share a path with the pod's VM",
            source,
        };
        let mut layers = Vec::with_capacity(image.layers.len());
        for key in &image.layers {
            bind(
                &self.images.layer_dir(key),
                &layout.layer_mount(key),
                Access::ReadOnly,
            )
            .map_err(mount_err)?;
            layers.push(VmLayout::layer_guest_relative(key));
        }
        let mut mount_sources = Vec::with_capacity(config.mounts.len());
        for (index, mount) in config.mounts.iter().enumerate() {
            let source = Path::new(&mount.host_path);
            if !source.is_absolute() || !source.exists() {
                return Err(RuntimeError::invalid(
                    format!("mounts[{index}].host_path {:?}", mount.host_path),
                    "does not exist or is not absolute",
                ));
            }
            let access = match (mount.readonly, mount.recursive_read_only) {
                (false, _) => Access::ReadWrite,
                (true, false) => Access::ReadOnly,
                (true, true) => Access::RecursiveReadOnly,
            };
            let target = layout.container_mount(id, index);
            bind(source, &target, access).map_err(mount_err)?;
            let submounts = if access == Access::ReadOnly {
                mounts_below(&target)
                    .map_err(mount_err)?
                    .into_iter()
                    .filter_map(|m| {
                        let path = m.path.strip_prefix(&target).ok()?.to_owned();
                        Some(Submount {
                            path,
                            read_only: m.read_only,
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            mount_sources.push(MountSource {
                guest_path: VmLayout::container_mount_guest_path(id, index),
                submounts,
            });
        }
        let passwd = self.images.read_image_file(image, "etc/passwd");
        let group = self.images.read_image_file(image, "etc/group");
        let pod_record = pod.record();
        let spec = spec::build(&SpecInput {
            pod: &pod_record.config,
            container: config,
            image: &image.config,
            sandbox_files: &pod_record.sandbox_files,
            mount_sources: &mount_sources,
            image_passwd: passwd.as_deref(),
            image_group: group.as_deref(),
        })?;
        let spec_len = serde_json::to_vec(&spec).map_or(0, |json| json.len());
        if spec_len > husk_proto::MAX_SPEC_BYTES {
            return Err(RuntimeError::invalid(
                "the container's OCI spec",
                format!(
                    "is {spec_len} bytes; the limit is {}",
                    husk_proto::MAX_SPEC_BYTES
                ),
            ));
        }
        let process = spec.process().clone().unwrap_or_default();
        Ok(Prepared {
            layers,
            spec,
            process,
        })
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let container = self.container(id)?;
        let (pod, agent) = self.running_pod(&container)?;
        let _op = pod.op.lock().await;
        let state = container.record().state;
        if state != ContainerState::Created {
            return Err(RuntimeError::wrong_state(
                "container",
                &container.id,
                format!("is {state:?}, not Created"),
            ));
        }
        agent
            .start_container(&container.id)
            .await
            .doing("start the container")?;
        let started = now_ns();
        // The exit event may already have been recorded.
        self.save_container(&container, |r| {
            r.started_at_ns = started;
            if r.state == ContainerState::Created {
                r.state = ContainerState::Running;
            }
        })?;
        self.emit(&container.id, &container.pod_id, LifecycleKind::Started);
        Ok(())
    }

    /// Signals the container's stop signal, waits `timeout`, then kills
    /// every process in it. Stopping a stopped or unknown container is not
    /// an error (CRI).
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: Duration) -> Result<()> {
        let container = match self.container(id) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if container.record().state != ContainerState::Running {
            return Ok(());
        }
        let Ok((_, agent)) = self.running_pod(&container) else {
            return Ok(());
        };
        if !timeout.is_zero() {
            let signal = self.stop_signal(&container);
            self.signal(&agent, &container.id, signal, false).await?;
            if self.wait_container_exit(&container, &agent, timeout).await {
                return Ok(());
            }
        }
        self.signal(&agent, &container.id, libc::SIGKILL, true)
            .await?;
        if !self
            .wait_container_exit(&container, &agent, CONTAINER_KILL)
            .await
        {
            return Err(RuntimeError::Timeout {
                what: format!("container {} did not exit after SIGKILL", container.id),
                after: CONTAINER_KILL,
            });
        }
        Ok(())
    }

    /// Signals the container's init (`all`: every process in it). A
    /// container that has exited meanwhile has nothing left to signal.
    pub(super) async fn signal(
        &self,
        agent: &AgentClient,
        id: &str,
        signal: i32,
        all: bool,
    ) -> Result<()> {
        let scope = if all {
            SignalScope::Container
        } else {
            SignalScope::Process
        };
        match agent.signal(&ProcessRef::init(id), signal, scope).await {
            Err(e) if e.is_failed_precondition() => Ok(()),
            other => other.doing("signal the container"),
        }
    }

    /// The image's STOPSIGNAL, else SIGTERM.
    fn stop_signal(&self, container: &Container) -> i32 {
        let image_id = container.record().image_id;
        let named = self
            .images
            .get(&image_id)
            .ok()
            .flatten()
            .and_then(|i| i.config.stop_signal);
        named
            .and_then(|s| parse_signal(&s))
            .unwrap_or(libc::SIGTERM)
    }

    /// Waits up to `deadline` for the container to exit and records it.
    pub(super) async fn wait_container_exit(
        &self,
        container: &Container,
        agent: &AgentClient,
        deadline: Duration,
    ) -> bool {
        match agent.wait(&ProcessRef::init(&container.id), deadline).await {
            Ok(exit) => {
                self.on_container_exit(container, &exit);
                true
            }
            Err(_) => false,
        }
    }

    /// Removes the container (killing it if it runs). Removing an unknown
    /// container is not an error (CRI).
    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let container = match self.container(id) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let pod = self.pod(&container.pod_id)?;
        let _op = pod.op.lock().await;
        if let Some(agent) = pod.agent() {
            let deleted = agent
                .clone()
                .with_call_timeout(CONTAINER_DELETE)
                .delete_container(&container.id, true)
                .await;
            match deleted {
                Err(e) if e.is_not_found() => {}
                other => other.doing("delete the container")?,
            }
        }
        io::stop_pump(&container);
        let layout = self.layout(&pod);
        unmount_under(&layout.container_mounts_dir(&container.id)).map_err(|source| {
            RuntimeError::Mount {
                action: "remove the container's mounts",
                source,
            }
        })?;
        let _ = std::fs::remove_dir_all(layout.container_mounts_dir(&container.id));
        self.store.remove_container(&container.id)?;
        self.tables.lock().unwrap().containers.remove(&container.id);
        self.emit(&container.id, &container.pod_id, LifecycleKind::Deleted);
        Ok(())
    }

    /// Applies new CPU and memory limits in the guest, then records them.
    pub async fn update_container_resources(
        self: &Arc<Self>,
        id: &str,
        resources: LinuxContainerResources,
    ) -> Result<()> {
        let container = self.container(id)?;
        let (_, agent) = self.running_pod(&container)?;
        let state = container.record().state;
        if state == ContainerState::Exited {
            return Err(RuntimeError::wrong_state(
                "container",
                &container.id,
                "has exited",
            ));
        }
        let linux = spec::linux_resources(&resources)?.unwrap_or_default();
        agent
            .update_container(&container.id, &linux)
            .await
            .doing("update the container's resources")?;
        self.save_container(&container, |r| {
            r.config
                .linux
                .get_or_insert_with(Default::default)
                .resources = Some(resources);
        })?;
        Ok(())
    }

    /// Reopens the log file after kubelet rotated it.
    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let container = self.container(id)?;
        if container.record().state != ContainerState::Running {
            return Err(RuntimeError::wrong_state(
                "container",
                &container.id,
                "is not running",
            ));
        }
        let mut log = container.log.lock().unwrap();
        let writer = log.as_mut().ok_or_else(|| {
            RuntimeError::wrong_state("container", &container.id, "has no log file")
        })?;
        writer.reopen().map_err(|source| RuntimeError::LogFile {
            path: writer.path().to_owned(),
            source,
        })
    }

    /// The container's pod and its agent, if the VM runs.
    pub(super) fn running_pod(&self, container: &Container) -> Result<(Arc<Pod>, AgentClient)> {
        let pod = self.pod(&container.pod_id)?;
        let agent = pod.agent().ok_or_else(|| {
            RuntimeError::wrong_state("the VM of pod", &container.pod_id, "is not running")
        })?;
        Ok((pod, agent))
    }
}

fn check_container_config(config: &ContainerConfig) -> Result<()> {
    let size = config.encoded_len();
    if size > MAX_CONTAINER_CONFIG_BYTES {
        return Err(RuntimeError::invalid(
            "the container config",
            format!("is {size} bytes; the limit is {MAX_CONTAINER_CONFIG_BYTES}"),
        ));
    }
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    if name.is_empty() {
        return Err(RuntimeError::invalid("config.metadata.name", "is empty"));
    }
    if config.image.as_ref().is_none_or(|i| i.image.is_empty()) {
        return Err(RuntimeError::invalid("config.image.image", "is empty"));
    }
    Ok(())
}

/// "SIGTERM", "TERM", "15" → 15.
fn parse_signal(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = name.trim_start_matches("SIG");
    let sig: nix::sys::signal::Signal = format!("SIG{name}").parse().ok()?;
    Some(sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("QUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}
