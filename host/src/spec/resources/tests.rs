use std::collections::HashMap;

use k8s_cri::v1::{HugepageLimit, LinuxContainerResources};
use oci_spec::runtime::LinuxResources;

use super::resources_json;
use crate::spec::fixture::Fixture;

fn resources(f: &Fixture) -> Option<LinuxResources> {
    f.spec().linux().as_ref().unwrap().resources().clone()
}

#[test]
fn nothing_limited_means_no_resources() {
    let mut f = Fixture::new();
    assert_eq!(resources(&f), None);
    f.resources().hugepage_limits = vec![HugepageLimit {
        page_size: "2MB".into(),
        limit: 1 << 30,
    }];
    assert_eq!(resources(&f), None);
}

#[test]
fn cpu_memory_and_unified_are_passed_on() {
    let mut f = Fixture::new();
    *f.resources() = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        memory_swap_limit_in_bytes: 512 << 20,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        unified: HashMap::from([("memory.high".to_string(), "200000000".to_string())]),
        ..Default::default()
    };
    let r = resources(&f).unwrap();
    let cpu = r.cpu().clone().unwrap();
    assert_eq!(cpu.period(), Some(100_000));
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.shares(), Some(512));
    assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
    assert_eq!(cpu.mems().as_deref(), Some("0"));
    let mem = r.memory().unwrap();
    assert_eq!(mem.limit(), Some(256 << 20));
    assert_eq!(mem.swap(), Some(512 << 20));
    assert_eq!(
        r.unified()
            .as_ref()
            .unwrap()
            .get("memory.high")
            .map(String::as_str),
        Some("200000000")
    );
    assert!(r.pids().is_none() && r.hugepage_limits().is_none());
}

#[test]
fn only_what_is_set() {
    let mut f = Fixture::new();
    f.resources().memory_limit_in_bytes = 64 << 20;
    let r = resources(&f).unwrap();
    assert!(r.cpu().is_none());
    assert_eq!(r.memory().unwrap().swap(), None);
    f.resources().memory_limit_in_bytes = -5;
    assert!(f
        .err()
        .starts_with("linux.resources.memory_limit_in_bytes: -5"));
    f.resources().memory_limit_in_bytes = 0;
    f.resources().cpu_shares = -2;
    assert!(f.err().starts_with("linux.resources.cpu_shares:"));
}

#[test]
fn update_json_parses_as_oci_resources() {
    let json = resources_json(&LinuxContainerResources {
        cpu_quota: 20_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 1 << 30,
        ..Default::default()
    })
    .unwrap();
    let r: LinuxResources = serde_json::from_str(&json).unwrap();
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(20_000));
    assert_eq!(r.memory().unwrap().limit(), Some(1 << 30));
    assert_eq!(
        resources_json(&LinuxContainerResources::default()).unwrap(),
        "{}"
    );
}
