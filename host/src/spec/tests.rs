//! Whole-spec checks; each part's rules are tested beside it.

use std::collections::HashMap;

use k8s_cri::v1::{CdiDevice, Device, SeLinuxOption, SecurityProfile};
use oci_spec::runtime::Spec;

use super::fixture::Fixture;
use super::paths::{DEFAULT_MASKED, DEFAULT_READONLY};

#[test]
fn the_spec_round_trips_through_json() {
    let mut f = Fixture::new();
    f.mount("/data", "/run/husk/shared/v0");
    f.resources().memory_limit_in_bytes = 128 << 20;
    f.sc().seccomp = Some(SecurityProfile::default()); // RuntimeDefault
    let spec = f.spec();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    // The fields the agent requires.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["ociVersion"], "1.0.2");
    assert_eq!(value["root"]["path"], "rootfs");
    assert_eq!(value["root"]["readonly"], false);
    assert!(value["process"]["args"].is_array());
    assert_eq!(value["process"]["cwd"], "/");
    assert!(value.get("hostname").is_none());
    assert!(value.get("hooks").is_none());
    assert!(value["linux"].get("devices").is_none());
}

#[test]
fn annotations_carry_the_cri_names() {
    let mut f = Fixture::new();
    f.container.annotations = HashMap::from([
        ("team".to_string(), "shop".to_string()),
        (
            "io.kubernetes.cri.container-type".to_string(),
            "spoofed".to_string(),
        ),
    ]);
    let spec = f.spec();
    let a = spec.annotations().as_ref().unwrap();
    assert_eq!(a["team"], "shop");
    assert_eq!(a["io.kubernetes.cri.container-type"], "container");
    assert_eq!(a["io.kubernetes.cri.container-name"], "app");
    assert_eq!(a["io.kubernetes.cri.sandbox-name"], "web-0");
    assert_eq!(a["io.kubernetes.cri.sandbox-namespace"], "shop");
    assert_eq!(a["io.kubernetes.cri.sandbox-uid"], "0b5c-uid");
}

#[test]
fn sysctls_come_from_the_pod() {
    let mut f = Fixture::new();
    assert!(f.spec().linux().as_ref().unwrap().sysctl().is_none());
    f.pod.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "0".into())]);
    let spec = f.spec();
    let sysctl = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
    assert_eq!(sysctl["net.ipv4.ip_unprivileged_port_start"], "0");
}

#[test]
fn masked_and_readonly_paths() {
    let mut f = Fixture::new();
    let paths = |f: &Fixture| {
        let spec = f.spec();
        let l = spec.linux().clone().unwrap();
        (
            l.masked_paths().clone().unwrap(),
            l.readonly_paths().clone().unwrap(),
        )
    };
    let (m, r) = paths(&f);
    assert_eq!(m, DEFAULT_MASKED);
    assert_eq!(r, DEFAULT_READONLY);
    f.sc().masked_paths = vec!["/proc/kcore".into()];
    f.sc().readonly_paths = vec!["/proc/sys".into()];
    assert_eq!(
        paths(&f),
        (vec!["/proc/kcore".into()], vec!["/proc/sys".into()])
    );
    f.sc().privileged = true;
    assert_eq!(paths(&f), (vec![], vec![]));
}

#[test]
fn host_devices_are_refused() {
    let mut f = Fixture::new();
    f.container.devices = vec![Device {
        container_path: "/dev/fuse".into(),
        host_path: "/dev/fuse".into(),
        permissions: "rwm".into(),
    }];
    assert_eq!(
        f.err(),
        "devices: host devices cannot be passed into a husk microVM yet"
    );
    f.container.devices.clear();
    f.container.cdi_devices = vec![CdiDevice {
        name: "vendor.com/gpu=0".into(),
    }];
    assert!(f.err().starts_with("CDI_devices:"));
}

#[test]
fn apparmor_and_selinux_are_ignored() {
    let mut f = Fixture::new();
    f.sc().apparmor = Some(SecurityProfile {
        profile_type: 2,
        localhost_ref: "k8s-nginx".into(),
    });
    f.sc().selinux_options = Some(SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    });
    let spec = f.spec();
    let p = spec.process().as_ref().unwrap();
    assert!(p.apparmor_profile().is_none() && p.selinux_label().is_none());
}
