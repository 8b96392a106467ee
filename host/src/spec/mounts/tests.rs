use k8s_cri::v1::{IdMapping, ImageSpec, MountPropagation};
use oci_spec::runtime::{Mount, Spec};

use crate::spec::fixture::Fixture;
use crate::spec::{MountSource, Submount};

fn mounts(spec: &Spec) -> Vec<Mount> {
    spec.mounts().clone().unwrap()
}

fn destinations(f: &Fixture) -> Vec<String> {
    mounts(&f.spec())
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect()
}

fn find(f: &Fixture, dest: &str) -> Mount {
    mounts(&f.spec())
        .into_iter()
        .find(|m| m.destination().to_str() == Some(dest))
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

fn options(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

#[test]
fn standard_and_pod_file_mounts() {
    let f = Fixture::new();
    assert_eq!(
        destinations(&f),
        [
            "/proc",
            "/dev",
            "/sys",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/sys/fs/cgroup"
        ]
    );
    let sys = find(&f, "/sys");
    assert_eq!(sys.typ().as_deref(), Some("sysfs"));
    assert!(options(&sys).contains(&"ro".to_string()));
    let cg = find(&f, "/sys/fs/cgroup");
    assert_eq!(cg.typ().as_deref(), Some("cgroup2"));
    assert!(options(&cg).contains(&"ro".to_string()));
    let hosts = find(&f, "/etc/hosts");
    assert_eq!(hosts.typ().as_deref(), Some("bind"));
    assert_eq!(
        hosts.source().as_ref().unwrap().to_str(),
        Some("/run/husk/sandbox/hosts")
    );
    assert_eq!(options(&hosts), ["rbind", "rprivate", "rw"]);
}

#[test]
fn pod_files_follow_readonly_rootfs_and_may_be_absent() {
    let mut f = Fixture::new();
    f.sc().readonly_rootfs = true;
    f.files.resolv_conf = None;
    f.files.hostname = Some(String::new());
    assert!(options(&find(&f, "/etc/hosts")).contains(&"ro".to_string()));
    let d = destinations(&f);
    assert!(!d
        .iter()
        .any(|d| d == "/etc/resolv.conf" || d == "/etc/hostname"));
    assert_eq!(f.spec().root().as_ref().unwrap().readonly(), Some(true));
    f.files.hosts = Some("relative/hosts".into());
    assert!(f.err().starts_with("sandbox_files.hosts:"), "{}", f.err());
}

#[test]
fn privileged_gets_writable_sys() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    assert!(options(&find(&f, "/sys")).contains(&"rw".to_string()));
    assert!(options(&find(&f, "/sys/fs/cgroup")).contains(&"rw".to_string()));
}

#[test]
fn volumes_bind_their_guest_source_with_propagation() {
    let mut f = Fixture::new();
    f.mount("/data", "/run/husk/shared/v0").readonly = true;
    f.mount("/cache", "/run/husk/shared/v1").propagation =
        MountPropagation::PropagationHostToContainer as i32;
    let spec = f.spec();
    let data = find(&f, "/data");
    assert_eq!(data.typ().as_deref(), Some("bind"));
    assert_eq!(
        data.source().as_ref().unwrap().to_str(),
        Some("/run/husk/shared/v0")
    );
    assert_eq!(options(&data), ["rbind", "rprivate", "ro"]);
    assert_eq!(options(&find(&f, "/cache")), ["rbind", "rslave", "rw"]);
    assert_eq!(
        spec.linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rslave")
    );
    f.mount("/shared", "/run/husk/shared/v2").propagation =
        MountPropagation::PropagationBidirectional as i32;
    assert_eq!(options(&find(&f, "/shared")), ["rbind", "rshared", "rw"]);
    assert_eq!(
        f.spec()
            .linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rshared")
    );
    // No volume asking for propagation: the agent's default.
    let plain = Fixture::new().spec();
    assert_eq!(plain.linux().as_ref().unwrap().rootfs_propagation(), &None);
}

#[test]
fn recursive_read_only_and_image_volumes() {
    let mut f = Fixture::new();
    let m = f.mount("/rro", "/run/husk/shared/v0");
    m.readonly = true;
    m.recursive_read_only = true;
    f.mount("/img", "/run/husk/shared/v1").image = Some(ImageSpec {
        image: "sha256:abc".into(),
        ..Default::default()
    });
    assert_eq!(
        options(&find(&f, "/rro")),
        ["rbind", "rprivate", "ro", "rro"]
    );
    assert_eq!(options(&find(&f, "/img")), ["rbind", "rprivate", "ro"]);
    f.container.mounts[0].readonly = false;
    assert!(f
        .err()
        .starts_with("mounts[0].recursive_read_only: needs readonly"));
    f.container.mounts[0].readonly = true;
    f.container.mounts[0].propagation = MountPropagation::PropagationBidirectional as i32;
    assert!(f
        .err()
        .starts_with("mounts[0].recursive_read_only: needs propagation"));
}

#[test]
fn volumes_replace_standard_and_pod_file_mounts_at_the_same_place() {
    let mut f = Fixture::new();
    f.mount("/etc/hosts", "/run/husk/shared/etc-hosts");
    f.mount("/dev/shm", "/run/husk/shared/shm");
    let spec = f.spec();
    let all = mounts(&spec);
    let at = |d: &str| {
        all.iter()
            .filter(|m| m.destination().to_str() == Some(d))
            .count()
    };
    assert_eq!(at("/etc/hosts"), 1);
    assert_eq!(at("/dev/shm"), 1);
    assert_eq!(
        find(&f, "/etc/hosts").source().as_ref().unwrap().to_str(),
        Some("/run/husk/shared/etc-hosts")
    );
    assert_eq!(find(&f, "/dev/shm").typ().as_deref(), Some("bind"));
}

#[test]
fn parents_come_before_children() {
    let mut f = Fixture::new();
    f.mount("/data/a/b", "/g/0");
    f.mount("/data", "/g/1");
    f.mount("/data/a", "/g/2");
    f.mount("/other", "/g/3");
    let d = destinations(&f);
    let pos = |p: &str| d.iter().position(|x| x == p).unwrap();
    assert!(pos("/data") < pos("/data/a"));
    assert!(pos("/data/a") < pos("/data/a/b"));
    assert!(pos("/dev") < pos("/dev/pts"));
    assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    // Same depth keeps the order asked.
    assert!(pos("/data") < pos("/other"));
}

#[test]
fn bad_volumes_are_refused() {
    for (path, source, want) in [
        ("data", "/g/0", "mounts[0].container_path:"),
        ("/data/../etc", "/g/0", "mounts[0].container_path:"),
        ("/", "/g/0", "mounts[0].container_path: cannot mount over"),
        ("/data", "g/0", "mount_sources[0]:"),
        ("/data", "", "mount_sources[0]:"),
    ] {
        let mut f = Fixture::new();
        f.mount(path, source);
        assert!(f.err().starts_with(want), "{path} {source}: {}", f.err());
    }
    let mut f = Fixture::new();
    f.mount("/data", "/g/0");
    f.sources.push(MountSource {
        guest_path: "/g/extra".into(),
        submounts: Vec::new(),
    });
    assert!(f.err().starts_with("mounts: 1 mounts but 2 guest sources"));
    let mut f = Fixture::new();
    f.mount("/data", "/g/0").uid_mappings = vec![IdMapping::default()];
    assert!(f.err().starts_with("mounts[0].uidMappings:"));
    let mut f = Fixture::new();
    f.mount("/data", "/g/0").propagation = 7;
    assert!(f.err().starts_with("mounts[0].propagation: unknown"));
}

/// A host mount inside a read-only volume gets its own bind with its own
/// flag; inside a writable or recursively read-only one it needs none.
#[test]
fn host_mounts_inside_a_read_only_volume_get_their_own_binds() {
    let submounts = vec![
        Submount {
            path: "tmpfs".into(),
            read_only: false,
        },
        Submount {
            path: "a/locked".into(),
            read_only: true,
        },
    ];
    let mut f = Fixture::new();
    f.mount("/mnt", "/g/0").readonly = true;
    f.sources[0].submounts = submounts.clone();
    let tmpfs = find(&f, "/mnt/tmpfs");
    assert_eq!(
        tmpfs.source().as_ref().unwrap().to_str(),
        Some("/g/0/tmpfs")
    );
    assert_eq!(options(&tmpfs), ["rbind", "rprivate", "rw"]);
    assert_eq!(
        options(&find(&f, "/mnt/a/locked")),
        ["rbind", "rprivate", "ro"]
    );
    let d = destinations(&f);
    let pos = |p: &str| d.iter().position(|x| x == p).unwrap();
    assert!(pos("/mnt") < pos("/mnt/tmpfs"));

    for recursive in [false, true] {
        let mut f = Fixture::new();
        let m = f.mount("/mnt", "/g/0");
        m.readonly = recursive;
        m.recursive_read_only = recursive;
        f.sources[0].submounts = submounts.clone();
        assert!(!destinations(&f).iter().any(|d| d.starts_with("/mnt/")));
    }

    for bad in ["", "/abs", "../up", "a/../../b"] {
        let mut f = Fixture::new();
        f.mount("/mnt", "/g/0").readonly = true;
        f.sources[0] = MountSource {
            guest_path: "/g/0".into(),
            submounts: vec![Submount {
                path: bad.into(),
                read_only: false,
            }],
        };
        assert!(
            f.err().starts_with("mount_sources[0].submounts:"),
            "{bad}: {}",
            f.err()
        );
    }
}
