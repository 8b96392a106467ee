//! RunPodSandbox, StopPodSandbox, RemovePodSandbox: a pod is one microVM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use husk_agent_client::AgentClient;
use husk_proto::agent::v1::{
    Interface, SetupNetworkRequest, SetupSandboxRequest, ShutdownRequest, SignalProcessRequest,
};
use husk_proto::AGENT_VSOCK_PORT;
use k8s_cri::v1::PodSandboxConfig;

use super::agent::{PodAgent, SHORT_CALL};
use super::error::{Result, RuntimeError};
use super::events::{follow_events, watch_vm};
use super::ids::new_id;
use super::{io, now_ns, LifecycleKind, Pod, Runtime};
use crate::state::{ContainerState, PodRecord, PodState, SandboxFiles, VmRecord};
use crate::vm::{unmount_under, VmLayout, VmProcess, VmSpec};

/// How long a powered-off guest may take to end its VMM before it is
/// killed.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
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
                return Err(RuntimeError::AlreadyExists(format!(
                    "pod sandbox name {} is already used by pod {}",
                    pod_name(&record.config),
                    other.id
                )));
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
                tracing::warn!(pod = %id, %error, "pod start failed");
                self.destroy_pod(&pod, &layout).await;
                Err(error)
            }
        }
    }

    fn check_pod_config(&self, config: &PodSandboxConfig, handler: &str) -> Result<()> {
        let Some(meta) = &config.metadata else {
            return Err(RuntimeError::InvalidArgument(
                "config.metadata is required".into(),
            ));
        };
        for (field, value) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(RuntimeError::InvalidArgument(format!(
                    "config.metadata.{field} is empty"
                )));
            }
        }
        if !self.config.accepts_runtime_handler(handler) {
            return Err(RuntimeError::InvalidArgument(format!(
                "runtime_handler {handler:?} is not configured (configured: {:?})",
                self.config.runtime_handlers
            )));
        }
        if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
            return Err(RuntimeError::InvalidArgument(format!(
                "config.log_directory {:?} is not an absolute path",
                config.log_directory
            )));
        }
        Ok(())
    }

    /// Starts the VMM, waits for the agent and gives it the pod's files
    /// and network.
    async fn boot(self: &Arc<Self>, pod: &Arc<Pod>, layout: &VmLayout) -> Result<()> {
        let config = pod.record().config;
        let (vcpus, memory_mib) = self.vm_size(&config);
        let spec = VmSpec {
            vmm: self.config.vm.vmm.clone(),
            kernel: self.config.vm.kernel.clone(),
            initramfs: self.config.vm.initramfs.clone(),
            vcpus,
            memory_mib,
            cid: GUEST_CID,
        };
        let vm = VmProcess::spawn(&spec, layout)
            .map_err(|e| RuntimeError::Internal(format!("cannot start the pod's VM: {e}")))?;
        let vm_record = VmRecord {
            pid: vm.pid,
            start_time: vm.start_time,
            vcpus,
            memory_mib,
            cid: GUEST_CID,
            run_dir: layout.root().to_owned(),
        };
        let handle = watch_vm(self, pod, vm);
        *pod.vm.lock().unwrap() = Some(handle);
        self.save_pod(pod, |r| r.vm = Some(vm_record))?;

        let deadline = Duration::from_secs(self.config.vm.boot_timeout_secs);
        let connect =
            AgentClient::connect_hybrid_vsock(layout.vsock_socket(), AGENT_VSOCK_PORT, deadline);
        let gone = async {
            let gone = pod.vm.lock().unwrap().as_ref().map(|vm| vm.gone_receiver());
            if let Some(mut gone) = gone {
                let _ = gone.wait_for(|g| *g).await;
            }
        };
        let client = tokio::select! {
            client = connect => client.map_err(|e| RuntimeError::Unavailable(format!(
                "the pod's VM did not answer within {deadline:?}: {e}; {}", vm_logs(layout)
            )))?,
            _ = gone => return Err(RuntimeError::Internal(format!(
                "the pod's VM exited while booting; {}", vm_logs(layout)
            ))),
        };
        let agent = PodAgent::new(&client);
        let files = agent
            .call("set up the sandbox", SHORT_CALL, |mut c| {
                let request = sandbox_request(&config);
                async move { c.setup_sandbox(request).await }
            })
            .await?;
        agent
            .call("set up the network", SHORT_CALL, |mut c| async move {
                c.setup_network(SetupNetworkRequest {
                    interfaces: vec![Interface {
                        name: "lo".into(),
                        mtu: 0,
                        addresses: vec!["127.0.0.1/8".into()],
                        up: true,
                    }],
                    routes: vec![],
                })
                .await
            })
            .await?;
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        self.save_pod(pod, |r| {
            r.sandbox_files = SandboxFiles {
                hosts: non_empty(files.hosts_path),
                resolv_conf: non_empty(files.resolv_conf_path),
                hostname: non_empty(files.hostname_path),
            }
        })?;
        *pod.agent.lock().unwrap() = Some(agent.clone());
        follow_events(self, pod, agent);
        Ok(())
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
            Err(RuntimeError::NotFound(_)) => return Ok(()),
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
                .call("shut down", SHUTDOWN_WAIT, |mut c| async move {
                    c.shutdown(ShutdownRequest {}).await
                })
                .await;
        }
        let handle = pod.vm.lock().unwrap().take();
        if let Some(vm) = handle {
            if !vm.wait_gone(SHUTDOWN_WAIT).await {
                vm.kill().await;
            }
        }
        self.on_vm_exit(pod);
        // Again, to answer with the error if the record cannot be saved.
        self.mark_pod_stopped(pod)?;
        let layout = self.layout(pod);
        unmount_under(layout.root()).map_err(|e| {
            RuntimeError::Internal(format!("cannot clean up the pod's mounts: {e}"))
        })?;
        Ok(())
    }

    /// SIGKILLs the pod's running containers and records their exits.
    async fn kill_containers(&self, pod: &Pod, agent: &PodAgent) {
        for container in self.pod_containers(&pod.id) {
            if container.record().state != ContainerState::Running {
                continue;
            }
            let id = container.id.clone();
            let _ = agent
                .call("kill container", SHORT_CALL, |mut c| async move {
                    c.signal_process(SignalProcessRequest {
                        container_id: id,
                        exec_id: String::new(),
                        signal: libc::SIGKILL as u32,
                        all: true,
                    })
                    .await
                })
                .await;
            self.wait_container_exit(&container, agent, SHUTDOWN_WAIT)
                .await;
        }
    }

    /// Removes the pod, its containers, its VM and everything on disk.
    /// Removing an unknown pod is not an error (CRI).
    pub async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let pod = match self.pod(id) {
            Ok(pod) => pod,
            Err(RuntimeError::NotFound(_)) => return Ok(()),
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
        let handle = pod.vm.lock().unwrap().take();
        if let Some(vm) = handle {
            vm.kill().await;
        }
        if let Err(error) = unmount_under(layout.root()) {
            tracing::error!(pod = %pod.id, %error, "cannot unmount the pod's folder");
        } else if let Err(error) = std::fs::remove_dir_all(layout.root()) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(pod = %pod.id, %error, "cannot remove the pod's folder");
            }
        }
        if let Err(error) = self.store.remove_pod(&pod.id) {
            tracing::error!(pod = %pod.id, %error, "cannot remove the pod's record");
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

fn same_pod_name(a: &PodRecord, b: &PodRecord) -> bool {
    a.config.metadata == b.config.metadata
}

pub fn pod_name(config: &PodSandboxConfig) -> String {
    config.metadata.as_ref().map_or_else(String::new, |m| {
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    })
}

/// The pod's hostname, hosts file, resolv.conf and sysctls for the agent.
fn sandbox_request(config: &PodSandboxConfig) -> SetupSandboxRequest {
    let hostname = if config.hostname.is_empty() {
        config
            .metadata
            .as_ref()
            .map(|m| m.name.chars().take(63).collect())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    let resolv_conf = config
        .dns_config
        .as_ref()
        .map(|dns| {
            let mut text = String::new();
            if !dns.searches.is_empty() {
                text.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            for server in &dns.servers {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if !dns.options.is_empty() {
                text.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            text
        })
        .unwrap_or_default();
    let sysctls: HashMap<String, String> = config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    SetupSandboxRequest {
        hostname,
        hosts,
        resolv_conf,
        sysctls,
    }
}

/// The last lines of the VMM's log and the guest console, for errors.
fn vm_logs(layout: &VmLayout) -> String {
    let tail = |path: std::path::PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    };
    format!(
        "husk-vmm said:\n{}\nguest console:\n{}",
        tail(layout.vmm_log()),
        tail(layout.console_log())
    )
}
