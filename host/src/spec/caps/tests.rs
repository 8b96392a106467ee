use k8s_cri::v1::{Capability as CriCaps, Int64Value};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::{ALL, DEFAULT};
use crate::spec::fixture::Fixture;

fn caps(f: &Fixture) -> LinuxCapabilities {
    f.spec()
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap()
}

fn set(list: &[Capability]) -> Capabilities {
    list.iter().copied().collect()
}

fn with(f: &mut Fixture, add: &[&str], drop: &[&str], ambient: &[&str]) {
    let s = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    f.sc().capabilities = Some(CriCaps {
        add_capabilities: s(add),
        drop_capabilities: s(drop),
        add_ambient_capabilities: s(ambient),
    });
}

#[test]
fn root_gets_the_default_set() {
    let c = caps(&Fixture::new());
    let d = set(&DEFAULT);
    assert_eq!(c.bounding().as_ref(), Some(&d));
    assert_eq!(c.effective().as_ref(), Some(&d));
    assert_eq!(c.permitted().as_ref(), Some(&d));
    assert_eq!(c.inheritable().as_ref(), Some(&Capabilities::new()));
    assert_eq!(c.ambient().as_ref(), Some(&Capabilities::new()));
}

#[test]
fn add_and_drop_with_or_without_prefix_in_any_case() {
    let mut f = Fixture::new();
    with(
        &mut f,
        &["NET_ADMIN", "cap_sys_time"],
        &["CAP_CHOWN", "mknod"],
        &[],
    );
    let b = caps(&f).bounding().clone().unwrap();
    assert!(b.contains(&Capability::NetAdmin) && b.contains(&Capability::SysTime));
    assert!(!b.contains(&Capability::Chown) && !b.contains(&Capability::Mknod));
    assert_eq!(b.len(), DEFAULT.len());
}

#[test]
fn all_in_add_or_drop() {
    let mut f = Fixture::new();
    with(&mut f, &["ALL"], &["SYS_ADMIN"], &[]);
    let b = caps(&f).bounding().clone().unwrap();
    assert_eq!(b.len(), ALL.len() - 1);
    assert!(!b.contains(&Capability::SysAdmin));
    with(&mut f, &["NET_BIND_SERVICE"], &["all"], &[]);
    assert_eq!(
        caps(&f).bounding().clone().unwrap(),
        set(&[Capability::NetBindService])
    );
    with(&mut f, &[], &["ALL"], &[]);
    assert!(caps(&f).effective().as_ref().unwrap().is_empty());
}

#[test]
fn unknown_capabilities_are_errors() {
    let mut f = Fixture::new();
    with(&mut f, &["CAP_FOO"], &[], &[]);
    assert_eq!(
        f.err(),
        "security_context.capabilities.add_capabilities[0]: unknown capability \"CAP_FOO\""
    );
    with(&mut f, &[], &["KILL", "CAP_CAP_KILL"], &[]);
    assert!(f
        .err()
        .starts_with("security_context.capabilities.drop_capabilities[1]:"));
    with(&mut f, &[], &[], &[""]);
    assert!(f
        .err()
        .starts_with("security_context.capabilities.add_ambient_capabilities[0]:"));
}

#[test]
fn non_root_keeps_only_ambient_capabilities_active() {
    let mut f = Fixture::new();
    f.sc().run_as_user = Some(Int64Value { value: 1000 });
    let c = caps(&f);
    assert_eq!(c.bounding().as_ref(), Some(&set(&DEFAULT)));
    assert!(c.effective().as_ref().unwrap().is_empty());
    assert!(c.permitted().as_ref().unwrap().is_empty());
    with(&mut f, &[], &[], &["NET_BIND_SERVICE", "NET_ADMIN"]);
    let c = caps(&f);
    let amb = set(&[Capability::NetBindService, Capability::NetAdmin]);
    for s in [c.effective(), c.permitted(), c.inheritable(), c.ambient()] {
        assert_eq!(s.as_ref(), Some(&amb));
    }
    assert!(c
        .bounding()
        .as_ref()
        .unwrap()
        .contains(&Capability::NetAdmin));
    // A dropped capability leaves every set, ambient too.
    with(&mut f, &[], &["NET_ADMIN"], &["NET_ADMIN"]);
    let c = caps(&f);
    assert!(c.ambient().as_ref().unwrap().is_empty());
    assert!(!c
        .bounding()
        .as_ref()
        .unwrap()
        .contains(&Capability::NetAdmin));
}

#[test]
fn privileged_gets_everything_and_ignores_the_lists() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    with(&mut f, &["CAP_FOO"], &["ALL"], &[]);
    let c = caps(&f);
    let all = set(&ALL);
    assert_eq!(c.bounding().as_ref(), Some(&all));
    assert_eq!(c.effective().as_ref(), Some(&all));
    assert_eq!(c.permitted().as_ref(), Some(&all));
}

#[test]
fn every_listed_capability_round_trips_through_json() {
    let all = set(&ALL);
    let json = serde_json::to_string(&all).unwrap();
    let back: Capabilities = serde_json::from_str(&json).unwrap();
    assert_eq!(back, all);
    assert_eq!(all.len(), 41);
}
