//! A container config to vary in tests: a busybox-like image, a pod with
//! metadata, kubelet's usual namespace options.

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use oci_spec::runtime::Spec;

use super::{build, MountSource, SpecError, SpecInput};
use crate::image::ImageConfig;
use crate::state::SandboxFiles;

pub(super) const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
    bob:x:1001:100::/home/bob:/bin/sh\n";
pub(super) const GROUP: &str = "root:x:0:\n\
    daemon:x:1:\n\
    users:x:100:\n\
    alice:x:1000:alice\n\
    wheel:x:10:root,alice\n\
    audio:x:29:alice,bob\n";

pub(super) struct Fixture {
    pub pod: PodSandboxConfig,
    pub container: ContainerConfig,
    pub image: ImageConfig,
    pub files: SandboxFiles,
    pub sources: Vec<MountSource>,
    pub passwd: Option<String>,
    pub group: Option<String>,
}

impl Fixture {
    pub fn new() -> Self {
        let pod = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web-0".into(),
                uid: "0b5c-uid".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/shop_web-0_0b5c-uid".into(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let container = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        Self {
            pod,
            container,
            image: ImageConfig {
                env: vec!["PATH=/bin:/usr/bin".into(), "LANG=C.UTF-8".into()],
                cmd: vec!["sh".into()],
                ..Default::default()
            },
            files: SandboxFiles {
                hosts: Some("/run/husk/sandbox/hosts".into()),
                resolv_conf: Some("/run/husk/sandbox/resolv.conf".into()),
                hostname: Some("/run/husk/sandbox/hostname".into()),
            },
            sources: Vec::new(),
            passwd: Some(PASSWD.into()),
            group: Some(GROUP.into()),
        }
    }

    pub fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.container
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    pub fn resources(&mut self) -> &mut LinuxContainerResources {
        self.container
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    /// Adds a volume whose guest source is `source`.
    pub fn mount(&mut self, container_path: &str, source: &str) -> &mut Mount {
        self.sources.push(MountSource {
            guest_path: source.into(),
            submounts: Vec::new(),
        });
        self.container.mounts.push(Mount {
            container_path: container_path.into(),
            host_path: format!("/host{source}"),
            ..Default::default()
        });
        self.container.mounts.last_mut().unwrap()
    }

    pub fn input(&self) -> SpecInput<'_> {
        SpecInput {
            pod: &self.pod,
            container: &self.container,
            image: &self.image,
            sandbox_files: &self.files,
            mount_sources: &self.sources,
            image_passwd: self.passwd.as_deref(),
            image_group: self.group.as_deref(),
        }
    }

    pub fn build(&self) -> Result<Spec, SpecError> {
        build(&self.input())
    }

    pub fn spec(&self) -> Spec {
        self.build().unwrap()
    }

    /// The error's message; panics if the build succeeds.
    pub fn err(&self) -> String {
        match self.build() {
            Ok(_) => panic!("build succeeded"),
            Err(e) => e.to_string(),
        }
    }
}
