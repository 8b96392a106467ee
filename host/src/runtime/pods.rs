//! RunPodSandbox, StopPodSandbox, RemovePodSandbox: a pod is one microVM.

use std::sync::Arc;

use husk_agent_client::{AgentClient, Interface, NetworkConfig};
use k8s_cri::v1::PodSandboxConfig;

use super::error::{AgentResultExt, Result, RuntimeError};
use super::ids::new_id;
use super::{io, monitor, now_ns, LifecycleKind, Pod, Runtime};
use crate::deadlines::{AGENT_CALL, GUEST_SHUTDOWN};
use crate::spec;
use crate::state::{PodRecord, PodState, SandboxFiles, VmRecord};
use crate::vm::{unmount_under, vm_logs, VmHandle, VmLayout, VmSpec};

/// Every VM's vsock context id: each VM has its own device and the host
/// reaches it through the VMM's socket, so ids never meet.
const GUEST_CID: u64 = 3;

impl Runtime {
    /// Starts a pod's VM and prepares it; on any failure nothing is left.
    pub async fn run_pod(
        self: &Arc<Self>,
        config: PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String> {
        self.check_pod_config(&config, &runtime_handler)?;
        let id = new_id();
        let record = PodRecord {
            id: id.clone(),
            config,
            runtime_handler,
            created_at_ns: now_ns(),
            state: PodState::Creating,
            vm: None,
            sandbox_files: SandboxFiles::default(),
        };
        let pod = Pod::new(record.clone());
        let _op = pod.op.lock().await;
        {
            // The name check and the insert happen under one lock, so two
            // racing calls cannot both take a name.
            let mut tables = self.tables.lock().unwrap();
            if let Some(other) = tables
                .pods
                .values()
                .find(|p| same_pod_name(&p.record(), &record))
            {
                return Err(RuntimeError::AlreadyExists {
                    what: format!("pod sandbox name {}", pod_name(&record.config)),
                    kind: "pod",
                    owner: other.id.clone(),
                });
            }
            self.store.save_pod(&record)?;
            tables.pods.insert(id.clone(), pod.clone());
        }
        let layout = VmLayout::new(&self.config.run_dir, &id);
        match self.boot(&pod, &layout).await {
            Ok(()) => {
                self.save_pod(&pod, |r| r.state = PodState::Ready)?;
                self.emit(&id, &id, LifecycleKind::Created);
                self.emit(&id, &id, LifecycleKind::Started);
                tracing::info!(pod = %id, name = %pod_name(&pod.record().config), "pod ready");
                Ok(id)
            }
            Err(error) => {
                tracing::warn!(pod = %id, error = %crate::server::status::message(&error), "pod start failed");
                self.destroy_pod(&pod, &layout).await;
                Err(error)
            }
        }
    }

    fn check_pod_config(&self, config: &PodSandboxConfig, handler: &str) -> Result<()> {
        let Some(meta) = &config.metadata else {
            return Err(RuntimeError::invalid("config.metadata", "is required"));
        };
        for (field, value) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(RuntimeError::invalid(
                    format!("config.metadata.{field}"),
                    "is empty",
                ));
            }
        }
        if !self.config.accepts_runtime_handler(handler) {
            return Err(RuntimeError::invalid(
                format!("runtime_handler {handler:?}"),
                format!(
                    "is not configured (configured: {:?})",
                    self.config.runtime_handlers
                ),
            ));
        }
        if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
            return Err(RuntimeError::invalid(
                format!("config.log_directory {:?}", config.log_directory),
                "is not an absolute path",
            ));
        }
        Ok(())
    }

    /// Starts the VM, waits for the agent and gives it the pod's files and
    /// network.
    async fn boot(self: &Arc<Self>, pod: &Arc<Pod>, layout: &VmLayout) -> Result<()> {
        let config = pod.record().config;
        let (vcpus, memory_mib) = self.vm_size(&config);
        let spec = VmSpec {
            kernel: self.config.vm.kernel.clone(),
            initramfs: self.config.vm.initramfs.clone(),
            vcpus,
            memory_mib,
            cid: GUEST_CID,
        };
        let vm = Arc::new(
            self.vms
                .start(&spec, layout)
                .map_err(RuntimeError::VmStart)?,
        );
        let vm_record = VmRecord {
            pid: vm.pid,
            start_time: vm.start_time,
            vcpus,
            memory_mib,
            cid: GUEST_CID,
            run_dir: layout.root().to_owned(),
            ended: None,
        };
        *pod.vm.lock().unwrap() = Some(vm.clone());
        monitor::watch_vm(self, pod, &vm);
        self.save_pod(pod, |r| r.vm = Some(vm_record))?;

        let deadline = std::time::Duration::from_secs(self.config.vm.boot_timeout_secs);
        let agent = self.connect_agent(&vm, layout, deadline).await?;
        let files = agent
            .setup_sandbox(spec::sandbox_config(&config))
            .await
            .doing("set up the sandbox")?;
        agent
            .setup_network(loopback_only())
            .await
            .doing("set up the network")?;
        self.save_pod(pod, |r| {
            r.sandbox_files = SandboxFiles {
                hosts: files.hosts,
                resolv_conf: files.resolv_conf,
                hostname: files.hostname,
            }
        })?;
        *pod.agent.lock().unwrap() = Some(agent.clone());
        monitor::follow_events(self, pod, agent);
        Ok(())
    }

    /// The VM's agent, or why there is none: the VMM ended first (how, and
    /// what it and the guest said), or the agent did not answer in time.
    async fn connect_agent(
        &self,
        vm: &VmHandle,
        layout: &VmLayout,
        deadline: std::time::Duration,
    ) -> Result<AgentClient> {
        let connect = AgentClient::connect(vm.agent_addr().clone(), deadline);
        let mut exit = vm.exit_receiver();
        let ended = exit.wait_for(Option::is_some);
        tokio::select! {
            client = connect => match client {
                Ok(client) => Ok(client.with_call_timeout(AGENT_CALL)),
                Err(source) => {
                    // Lost a race with the VMM's end: say so rather than
                    // blame the agent.
                    if let Some(exit) = vm.exit() {
                        return Err(RuntimeError::VmBoot { exit, logs: vm_logs(layout) });
                    }
                    Err(RuntimeError::VmUnresponsive {
                        deadline,
                        logs: vm_logs(layout),
                        source: Box::new(source),
                    })
                }
            },
            ended = ended => {
                let exit = ended.ok().and_then(|e| *e).unwrap_or(crate::vm::VmExit::Unobserved);
                Err(RuntimeError::VmBoot { exit, logs: vm_logs(layout) })
            }
        }
    }

    /// vCPUs and MiB for the pod: its limits (kubelet passes the pod's
    /// resources and overhead) plus the configured overhead.
    fn vm_size(&self, config: &PodSandboxConfig) -> (u8, u64) {
        let linux = config.linux.as_ref();
        let resources = linux.and_then(|l| l.resources.as_ref());
        let overhead = linux.and_then(|l| l.overhead.as_ref());
        let limit = resources
            .map(|r| r.memory_limit_in_bytes)
            .filter(|l| *l > 0)
            .map(|l| l as u64 + overhead.map_or(0, |o| o.memory_limit_in_bytes.max(0) as u64));
        let (quota, period) = resources.map_or((0, 0), |r| (r.cpu_quota, r.cpu_period));
        (
            self.config.vm_vcpus(quota, period),
            self.config.vm_memory_mib(limit),
        )
    }

    /// Stops every container and the VM; the pod stays listed as NotReady.
    /// Stopping a stopped or unknown pod is not an error (CRI).
    pub async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let pod = match self.pod(id) {
            Ok(pod) => pod,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = pod.op.lock().await;
        self.stop_pod_locked(&pod).await
    }

    async fn stop_pod_locked(self: &Arc<Self>, pod: &Arc<Pod>) -> Result<()> {
        if let Some(agent) = pod.agent() {
            self.kill_containers(pod, &agent).await;
            // A clean power-off first; the VMM exits when the guest resets.
            let _ = agent
                .clone()
                .with_call_timeout(GUEST_SHUTDOWN)
                .shutdown()
                .await;
        }
        let vm = pod.vm.lock().unwrap().take();
        let exit = match vm {
            Some(vm) => match vm.wait(GUEST_SHUTDOWN).await {
                Some(exit) => Some(exit),
                None => vm.kill().await,
            },
            None => None,
        };
        self.on_vm_exit(pod, exit);
        // Again, to answer with the error if the record cannot be saved.
        self.mark_pod_stopped(pod)?;
        let layout = self.layout(pod);
        unmount_under(layout.root()).map_err(|source| RuntimeError::Mount {
            action: "clean up the pod's mounts",
            source,
        })?;
        Ok(())
    }

    /// SIGKILLs the pod's running containers and records their exits.
    async fn kill_containers(&self, pod: &Pod, agent: &AgentClient) {
        for container in self.pod_containers(&pod.id) {
            if container.record().state != crate::state::ContainerState::Running {
                continue;
            }
            let _ = self.signal(agent, &container.id, libc::SIGKILL, true).await;
            self.wait_container_exit(&container, agent, GUEST_SHUTDOWN)
                .await;
        }
    }

    /// Removes the pod, its containers, its VM and everything on disk.
    /// Removing an unknown pod is not an error (CRI).
    pub async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let pod = match self.pod(id) {
            Ok(pod) => pod,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = pod.op.lock().await;
        self.stop_pod_locked(&pod).await?;
        for container in self.pod_containers(&pod.id) {
            io::stop_pump(&container);
            self.store.remove_container(&container.id)?;
            self.tables.lock().unwrap().containers.remove(&container.id);
            self.emit(&container.id, &pod.id, LifecycleKind::Deleted);
        }
        let layout = self.layout(&pod);
        self.destroy_pod(&pod, &layout).await;
        self.emit(&pod.id, &pod.id, LifecycleKind::Deleted);
        tracing::info!(pod = %pod.id, "pod removed");
        Ok(())
    }

    /// Kills the VM, removes mounts, the pod's folder and its record.
    async fn destroy_pod(&self, pod: &Pod, layout: &VmLayout) {
        let vm = pod.vm.lock().unwrap().take();
        if let Some(vm) = vm {
            vm.kill().await;
        }
        if let Err(error) = unmount_under(layout.root()) {
            tracing::error!(pod = %pod.id, %error, "cannot unmount the pod's folder");
        } else if let Err(error) = std::fs::remove_dir_all(layout.root()) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(pod = %pod.id, %error, "cannot remove the pod's folder");
            }
        }
        {
            // Under the record's lock, so a late writer (the VM monitor
            // recording how the VM ended) cannot bring the record back.
            let _record = pod.record.lock().unwrap();
            pod.removed
                .store(true, std::sync::atomic::Ordering::Release);
            if let Err(error) = self.store.remove_pod(&pod.id) {
                tracing::error!(pod = %pod.id, %error, "cannot remove the pod's record");
            }
        }
        self.tables.lock().unwrap().pods.remove(&pod.id);
    }

    pub(super) fn layout(&self, pod: &Pod) -> VmLayout {
        match pod.record().vm {
            Some(vm) => VmLayout::from_root(vm.run_dir),
            None => VmLayout::new(&self.config.run_dir, &pod.id),
        }
    }
}

/// Pods get loopback only until pod networking lands.
fn loopback_only() -> NetworkConfig {
    NetworkConfig {
        interfaces: vec![Interface {
            name: "lo".into(),
            mtu: 0,
            addresses: vec!["127.0.0.1/8".into()],
            up: true,
        }],
        routes: vec![],
    }
}

fn same_pod_name(a: &PodRecord, b: &PodRecord) -> bool {
    a.config.metadata == b.config.metadata
}

pub fn pod_name(config: &PodSandboxConfig) -> String {
    config.metadata.as_ref().map_or_else(String::new, |m| {
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    })
}
