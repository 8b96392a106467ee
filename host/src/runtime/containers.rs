//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! UpdateContainerResources, ReopenContainerLog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_proto::agent::v1::{
    CreateContainerRequest, DeleteContainerRequest, SignalProcessRequest, StartContainerRequest,
    UpdateContainerRequest, WaitProcessRequest,
};
use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};
use prost::Message;

use super::agent::{PodAgent, SHORT_CALL};
use super::error::{Result, RuntimeError};
use super::ids::new_id;
use super::{io, now_ns, Container, LifecycleKind, Pod, Runtime};
use crate::image::Image;
use crate::logs::validate_log_path;
use crate::spec::{self, ImageDefaults, SpecInput};
use crate::state::{ContainerRecord, ContainerState, PodState};
use crate::vm::{bind_read_only, unmount_under, VmLayout};

/// A container config bigger than this is refused (the agent takes at
/// most 1 MiB of OCI spec).
pub const MAX_CONTAINER_CONFIG_BYTES: usize = 512 * 1024;
/// After SIGKILL, how long a container may take to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

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
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let agent = pod.agent().ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!("pod sandbox {} has no running VM", pod.id))
        })?;
        check_container_config(&config)?;
        let meta = config.metadata.clone().unwrap_or_default();
        if let Some(other) = self
            .pod_containers(&pod.id)
            .into_iter()
            .find(|c| c.record().config.metadata.as_ref() == Some(&meta))
        {
            return Err(RuntimeError::AlreadyExists(format!(
                "container name {:?} (attempt {}) is already used by container {} in pod {}",
                meta.name, meta.attempt, other.id, pod.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self.images.get(&image_name)?.ok_or_else(|| {
            RuntimeError::NotFound(format!("image {image_name:?} not found: pull it first"))
        })?;
        let log_path = validate_log_path(&pod_record.config.log_directory, &config.log_path)
            .map_err(|e| RuntimeError::InvalidArgument(e.to_string()))?;
        let writer = io::open_log(log_path.as_deref())?;

        let id = new_id();
        let layout = self.layout(&pod);
        let prepared = self.prepare_container(&id, &pod, &layout, &config, &image);
        let (layers, spec_json, process_json) = match prepared {
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
            process_json,
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
            .call("create container", SHORT_CALL, |mut c| {
                let request = CreateContainerRequest {
                    container_id: id.clone(),
                    oci_spec_json: spec_json.into_bytes(),
                    layers,
                    stdin: false,
                };
                async move { c.create_container(request).await }
            })
            .await;
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
    /// guest and builds the OCI spec: (layers, spec JSON, process JSON).
    fn prepare_container(
        &self,
        id: &str,
        pod: &Pod,
        layout: &VmLayout,
        config: &ContainerConfig,
        image: &Image,
    ) -> Result<(Vec<String>, String, String)> {
        let mount_err = |e: crate::vm::MountError| RuntimeError::Internal(e.to_string());
        let mut layers = Vec::with_capacity(image.layers.len());
        for key in &image.layers {
            bind_read_only(&self.images.layer_dir(key), &layout.layer_mount(key), false)
                .map_err(mount_err)?;
            layers.push(VmLayout::layer_guest_relative(key));
        }
        let mut mount_sources = Vec::with_capacity(config.mounts.len());
        for (index, mount) in config.mounts.iter().enumerate() {
            let source = Path::new(&mount.host_path);
            if !source.is_absolute() || !source.exists() {
                return Err(RuntimeError::InvalidArgument(format!(
                    "mounts[{index}].host_path {:?} does not exist or is not absolute",
                    mount.host_path
                )));
            }
            bind_read_only(source, &layout.container_mount(id, index), !mount.readonly)
                .map_err(mount_err)?;
            mount_sources.push(VmLayout::container_mount_guest_path(id, index));
        }
        let layer_dirs: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|k| self.images.layer_dir(k))
            .collect();
        let passwd = read_image_file(&layer_dirs, "etc/passwd");
        let group = read_image_file(&layer_dirs, "etc/group");
        let pod_record = pod.record();
        let defaults = ImageDefaults {
            user: image.config.user.clone(),
            env: image.config.env.clone(),
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            working_dir: image.config.working_dir.clone(),
        };
        let files = spec::SandboxFiles {
            hosts: pod_record.sandbox_files.hosts.clone(),
            resolv_conf: pod_record.sandbox_files.resolv_conf.clone(),
            hostname: pod_record.sandbox_files.hostname.clone(),
        };
        let spec = spec::build(&SpecInput {
            pod: &pod_record.config,
            container: config,
            image: &defaults,
            sandbox_files: &files,
            mount_sources: &mount_sources,
            image_passwd: passwd.as_deref(),
            image_group: group.as_deref(),
        })
        .map_err(|e| RuntimeError::InvalidArgument(e.to_string()))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| RuntimeError::Internal(format!("cannot encode the OCI spec: {e}")))?;
        if spec_json.len() > husk_proto::MAX_SPEC_BYTES {
            return Err(RuntimeError::InvalidArgument(format!(
                "the container's OCI spec is {} bytes; the limit is {}",
                spec_json.len(),
                husk_proto::MAX_SPEC_BYTES
            )));
        }
        let process_json = serde_json::to_string(&spec.process())
            .map_err(|e| RuntimeError::Internal(format!("cannot encode the process: {e}")))?;
        Ok((layers, spec_json, process_json))
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let container = self.container(id)?;
        let (pod, agent) = self.running_pod(&container)?;
        let _op = pod.op.lock().await;
        let state = container.record().state;
        if state != ContainerState::Created {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is {state:?}, not Created",
                container.id
            )));
        }
        let cid = container.id.clone();
        agent
            .call("start container", SHORT_CALL, |mut c| async move {
                c.start_container(StartContainerRequest { container_id: cid })
                    .await
            })
            .await?;
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
            Err(RuntimeError::NotFound(_)) => return Ok(()),
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
            .wait_container_exit(&container, &agent, KILL_WAIT)
            .await
        {
            return Err(RuntimeError::DeadlineExceeded(format!(
                "container {} did not exit within {KILL_WAIT:?} of SIGKILL",
                container.id
            )));
        }
        Ok(())
    }

    async fn signal(&self, agent: &PodAgent, id: &str, signal: i32, all: bool) -> Result<()> {
        let id = id.to_string();
        let result = agent
            .call("signal container", SHORT_CALL, |mut c| async move {
                c.signal_process(SignalProcessRequest {
                    container_id: id,
                    exec_id: String::new(),
                    signal: signal as u32,
                    all,
                })
                .await
            })
            .await;
        match result {
            // Exited in the meantime: nothing left to signal.
            Err(RuntimeError::Agent {
                code: tonic::Code::FailedPrecondition,
                ..
            }) => Ok(()),
            other => other.map(|_| ()),
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
        agent: &PodAgent,
        deadline: Duration,
    ) -> bool {
        let id = container.id.clone();
        let waited = agent
            .call("wait for container", deadline, |mut c| async move {
                c.wait_process(WaitProcessRequest {
                    container_id: id,
                    exec_id: String::new(),
                })
                .await
            })
            .await;
        match waited {
            Ok(response) => {
                if let Some(status) = response.status {
                    self.on_container_exit(container, &status);
                }
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
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let pod = self.pod(&container.pod_id)?;
        let _op = pod.op.lock().await;
        if let Some(agent) = pod.agent() {
            let cid = container.id.clone();
            agent
                .call("delete container", KILL_WAIT * 2, |mut c| async move {
                    c.delete_container(DeleteContainerRequest {
                        container_id: cid,
                        force: true,
                    })
                    .await
                })
                .await
                .or_else(|e| match e.code() {
                    tonic::Code::NotFound => Ok(Default::default()),
                    _ => Err(e),
                })?;
        }
        io::stop_pump(&container);
        let layout = self.layout(&pod);
        unmount_under(&layout.container_mounts_dir(&container.id))
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
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
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} has exited",
                container.id
            )));
        }
        let json = spec::resources_json(&resources)
            .map_err(|e| RuntimeError::InvalidArgument(e.to_string()))?;
        let cid = container.id.clone();
        agent
            .call("update container", SHORT_CALL, |mut c| async move {
                c.update_container(UpdateContainerRequest {
                    container_id: cid,
                    resources_json: json.into_bytes(),
                })
                .await
            })
            .await?;
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
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        let mut log = container.log.lock().unwrap();
        let writer = log.as_mut().ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!("container {} has no log file", container.id))
        })?;
        writer.reopen().map_err(|e| {
            RuntimeError::Internal(format!(
                "cannot reopen the log file {}: {e}",
                writer.path().display()
            ))
        })
    }

    /// The container's pod and its agent, if the VM runs.
    pub(super) fn running_pod(&self, container: &Container) -> Result<(Arc<Pod>, PodAgent)> {
        let pod = self.pod(&container.pod_id)?;
        let agent = pod.agent().ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!(
                "the VM of pod {} is not running",
                container.pod_id
            ))
        })?;
        Ok((pod, agent))
    }
}

fn check_container_config(config: &ContainerConfig) -> Result<()> {
    let size = config.encoded_len();
    if size > MAX_CONTAINER_CONFIG_BYTES {
        return Err(RuntimeError::InvalidArgument(format!(
            "the container config is {size} bytes; the limit is {MAX_CONTAINER_CONFIG_BYTES}"
        )));
    }
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    if name.is_empty() {
        return Err(RuntimeError::InvalidArgument(
            "config.metadata.name is empty".into(),
        ));
    }
    if config.image.as_ref().is_none_or(|i| i.image.is_empty()) {
        return Err(RuntimeError::InvalidArgument(
            "config.image.image is empty".into(),
        ));
    }
    Ok(())
}

/// The top-most regular file at `relative` in the image's layers, never
/// following a symlink (a layer is untrusted: `etc/passwd` could point at
/// the host's files). A whiteout or anything but a regular file ends the
/// search.
fn read_image_file(layers: &[PathBuf], relative: &str) -> Option<String> {
    for layer in layers.iter().rev() {
        let mut path = layer.clone();
        let mut ok = true;
        for part in relative.split('/') {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => return None,
                Ok(_) => {}
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        return std::fs::read_to_string(&path).ok();
    }
    None
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

    #[test]
    fn image_files_come_from_the_top_layer_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let low = dir.path().join("low");
        let high = dir.path().join("high");
        std::fs::create_dir_all(low.join("etc")).unwrap();
        std::fs::create_dir_all(high.join("etc")).unwrap();
        std::fs::write(low.join("etc/passwd"), "low").unwrap();
        let layers = vec![low.clone(), high.clone()];
        assert_eq!(read_image_file(&layers, "etc/passwd").unwrap(), "low");
        std::fs::write(high.join("etc/passwd"), "high").unwrap();
        assert_eq!(read_image_file(&layers, "etc/passwd").unwrap(), "high");
        std::fs::remove_file(high.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", high.join("etc/passwd")).unwrap();
        assert_eq!(read_image_file(&layers, "etc/passwd"), None);
    }
}
