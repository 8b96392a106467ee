use k8s_cri::v1::{
    IdMapping, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, UserNamespace,
};
use oci_spec::runtime::LinuxNamespaceType as T;

use crate::spec::fixture::Fixture;

fn kinds(f: &Fixture) -> Vec<T> {
    let spec = f.spec();
    let list = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(list.iter().all(|n| n.path().is_none()));
    list.iter().map(|n| n.typ()).collect()
}

fn pid(f: &mut Fixture, mode: NamespaceMode) {
    f.sc().namespace_options.as_mut().unwrap().pid = mode as i32;
}

#[test]
fn pid_modes() {
    let mut f = Fixture::new();
    assert_eq!(kinds(&f), [T::Mount, T::Pid, T::Cgroup]);
    pid(&mut f, NamespaceMode::Pod);
    assert_eq!(kinds(&f), [T::Mount, T::Cgroup]);
    pid(&mut f, NamespaceMode::Node);
    assert_eq!(kinds(&f), [T::Mount, T::Cgroup]);
    pid(&mut f, NamespaceMode::Target);
    f.sc().namespace_options.as_mut().unwrap().target_id = "abc".into();
    assert!(f
        .err()
        .starts_with("security_context.namespace_options.pid: mode TARGET"));
}

#[test]
fn ipc_and_network_are_the_vms_unless_container() {
    let mut f = Fixture::new();
    let o = f.sc().namespace_options.as_mut().unwrap();
    o.ipc = NamespaceMode::Node as i32;
    o.network = NamespaceMode::Node as i32;
    assert_eq!(kinds(&f), [T::Mount, T::Pid, T::Cgroup]);
    let o = f.sc().namespace_options.as_mut().unwrap();
    o.ipc = NamespaceMode::Container as i32;
    o.network = NamespaceMode::Container as i32;
    assert_eq!(kinds(&f), [T::Mount, T::Pid, T::Ipc, T::Network, T::Cgroup]);
    f.sc().namespace_options.as_mut().unwrap().network = 9;
    assert!(f
        .err()
        .starts_with("security_context.namespace_options.network: unknown namespace mode 9"));
}

#[test]
fn the_pods_options_are_the_fallback() {
    let mut f = Fixture::new();
    f.sc().namespace_options = None;
    // No options anywhere: the CRI default, POD.
    assert_eq!(kinds(&f), [T::Mount, T::Cgroup]);
    f.pod.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(kinds(&f), [T::Mount, T::Pid, T::Cgroup]);
}

#[test]
fn user_namespace_mappings_are_unsupported() {
    let mut f = Fixture::new();
    f.sc().namespace_options.as_mut().unwrap().userns_options = Some(UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    });
    f.spec();
    f.sc().namespace_options.as_mut().unwrap().userns_options = Some(UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        }],
        gids: vec![],
    });
    assert!(f
        .err()
        .starts_with("security_context.namespace_options.userns_options:"));
}
