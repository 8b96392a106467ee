use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::SecurityProfile;
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction};

use super::DENIED;
use crate::spec::fixture::Fixture;

fn seccomp(f: &Fixture) -> Option<LinuxSeccomp> {
    f.spec().linux().as_ref().unwrap().seccomp().clone()
}

fn profile(f: &mut Fixture, kind: ProfileType, localhost_ref: &str) {
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    });
}

#[test]
fn unset_and_unconfined_mean_none() {
    let mut f = Fixture::new();
    assert_eq!(seccomp(&f), None);
    profile(&mut f, ProfileType::Unconfined, "");
    assert_eq!(seccomp(&f), None);
}

#[test]
fn runtime_default_denies_with_eperm() {
    let mut f = Fixture::new();
    profile(&mut f, ProfileType::RuntimeDefault, "");
    let s = seccomp(&f).unwrap();
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(
        s.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64][..])
    );
    let rules = s.syscalls().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(rules[0].errno_ret(), Some(libc::EPERM as u32));
    for name in ["kexec_load", "bpf", "userfaultfd", "keyctl", "init_module"] {
        assert!(rules[0].names().iter().any(|n| n == name), "{name}");
    }
    assert!(!DENIED.contains(&"unshare"));
}

#[test]
fn localhost_reads_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    let mut f = Fixture::new();
    profile(&mut f, ProfileType::Localhost, path.to_str().unwrap());
    let s = seccomp(&f).unwrap();
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(
        s.syscalls().as_ref().unwrap()[0].names(),
        &["read", "write"]
    );

    std::fs::write(&path, "{not json").unwrap();
    let e = f.err();
    assert!(
        e.starts_with("security_context.seccomp.localhost_ref: seccomp profile")
            && e.contains(path.to_str().unwrap()),
        "{e}"
    );
    let missing = dir.path().join("missing.json");
    profile(&mut f, ProfileType::Localhost, missing.to_str().unwrap());
    let e = f.err();
    assert!(
        e.contains("cannot read seccomp profile") && e.contains("missing.json"),
        "{e}"
    );
    profile(&mut f, ProfileType::Localhost, "profiles/x.json");
    assert!(f.err().contains("is not an absolute path"), "{}", f.err());
}

#[test]
#[allow(deprecated)]
fn the_deprecated_profile_path() {
    let mut f = Fixture::new();
    f.sc().seccomp_profile_path = "runtime/default".into();
    assert!(seccomp(&f).is_some());
    f.sc().seccomp_profile_path = "unconfined".into();
    assert!(seccomp(&f).is_none());
    f.sc().seccomp_profile_path = "localhost/nowhere.json".into();
    assert!(f
        .err()
        .starts_with("security_context.seccomp_profile_path:"));
    f.sc().seccomp_profile_path = "bogus".into();
    assert!(f
        .err()
        .starts_with("security_context.seccomp_profile_path:"));
}

#[test]
fn privileged_has_no_filter() {
    let mut f = Fixture::new();
    profile(&mut f, ProfileType::RuntimeDefault, "");
    f.sc().privileged = true;
    assert_eq!(seccomp(&f), None);
}
