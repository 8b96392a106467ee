//! Checks a spec's filesystem fields in the agent, before any process
//! exists: a bad spec fails the create call with `InvalidArgument` instead
//! of leaving a half-built container behind.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::options::{self, MountKind};
use super::RootfsError;

/// Largest major and minor numbers the kernel's `dev_t` holds.
const MAX_MAJOR: i64 = (1 << 12) - 1;
const MAX_MINOR: i64 = (1 << 20) - 1;

/// See [`super::validate`].
pub(super) fn validate_spec(spec: &Spec, allowed_roots: &[PathBuf]) -> Result<(), RootfsError> {
    // Roots that do not exist cannot contain an existing source; skip them.
    let canonical_roots: Vec<PathBuf> = allowed_roots
        .iter()
        .filter(|r| r.is_absolute())
        .filter_map(|r| r.canonicalize().ok())
        .collect();
    for (i, mount) in spec.mounts().iter().flatten().enumerate() {
        check_mount(i, mount, allowed_roots, &canonical_roots)?;
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    if let Some(p) = linux.rootfs_propagation().as_deref() {
        if !p.is_empty() && options::propagation(p).is_none() {
            return Err(RootfsError::invalid(
                "linux.rootfsPropagation",
                p,
                "unknown propagation",
            ));
        }
    }
    for (name, list) in [
        ("maskedPaths", linux.masked_paths()),
        ("readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, path) in list.iter().flatten().enumerate() {
            check_container_path(&format!("linux.{name}[{i}]"), Path::new(path))?;
        }
    }
    for (i, device) in linux.devices().iter().flatten().enumerate() {
        check_device(i, device)?;
    }
    Ok(())
}

fn check_mount(
    i: usize,
    mount: &Mount,
    allowed_roots: &[PathBuf],
    canonical_roots: &[PathBuf],
) -> Result<(), RootfsError> {
    let destination = mount.destination();
    let field = format!("mounts[{i}].destination");
    check_container_path(&field, destination)?;
    if destination
        .components()
        .all(|c| c == Component::RootDir || c == Component::CurDir)
    {
        return Err(RootfsError::invalid(
            field,
            destination.display(),
            "cannot mount over the container's /",
        ));
    }
    if mount.uid_mappings().is_some() || mount.gid_mappings().is_some() {
        return Err(RootfsError::invalid(
            format!("mounts[{i}].uidMappings"),
            "",
            "idmapped mounts are not supported",
        ));
    }
    let list = mount.options().as_deref().unwrap_or_default();
    let opts = options::parse(list).map_err(|e| {
        RootfsError::invalid(
            format!("mounts[{i}].options[{}]", e.index),
            &list[e.index],
            e.reason,
        )
    })?;
    if options::mount_kind(i, mount, &opts)? != MountKind::Bind {
        return Ok(());
    }
    // A bind mount ignores filesystem data: the kernel would drop it
    // silently, so what the caller meant would not happen.
    if let Some(first) = opts.data.first() {
        let index = list.iter().position(|o| o == first).unwrap_or_default();
        return Err(RootfsError::invalid(
            format!("mounts[{i}].options[{index}]"),
            first,
            "not a bind mount option",
        ));
    }
    check_bind_source(i, mount.source().as_deref(), allowed_roots, canonical_roots)
}

fn check_bind_source(
    i: usize,
    source: Option<&Path>,
    allowed_roots: &[PathBuf],
    canonical_roots: &[PathBuf],
) -> Result<(), RootfsError> {
    let field = format!("mounts[{i}].source");
    let Some(source) = source else {
        return Err(RootfsError::invalid(
            field,
            "",
            "a bind mount needs a source",
        ));
    };
    check_host_path(&field, source)?;
    let lexically_inside = allowed_roots
        .iter()
        .any(|root| root.is_absolute() && source.starts_with(root));
    if !lexically_inside {
        return Err(RootfsError::invalid(
            field,
            source.display(),
            "outside the directories a container may bind from",
        ));
    }
    let real = source.canonicalize().map_err(|e| {
        RootfsError::invalid(
            &field,
            source.display(),
            format!("unusable bind source: {e}"),
        )
    })?;
    if !canonical_roots.iter().any(|root| real.starts_with(root)) {
        return Err(RootfsError::invalid(
            field,
            source.display(),
            format!(
                "resolves to {} outside the directories a container may bind from",
                real.display()
            ),
        ));
    }
    Ok(())
}

fn check_device(i: usize, device: &LinuxDevice) -> Result<(), RootfsError> {
    let field = format!("linux.devices[{i}].path");
    let path = device.path();
    check_container_path(&field, path)?;
    if !path.starts_with("/dev") || path.components().count() < 3 {
        return Err(RootfsError::invalid(
            field,
            path.display(),
            "must be under /dev",
        ));
    }
    if matches!(device.typ(), LinuxDeviceType::A) {
        return Err(RootfsError::invalid(
            format!("linux.devices[{i}].type"),
            "a",
            "must be c, b, u or p",
        ));
    }
    if device.typ() != LinuxDeviceType::P {
        for (name, value, max) in [
            ("major", device.major(), MAX_MAJOR),
            ("minor", device.minor(), MAX_MINOR),
        ] {
            if !(0..=max).contains(&value) {
                return Err(RootfsError::invalid(
                    format!("linux.devices[{i}].{name}"),
                    value,
                    format!("must be within 0..={max}"),
                ));
            }
        }
    }
    Ok(())
}

/// A path as the container sees it: absolute, no `..`, no NUL.
pub(super) fn check_container_path(field: &str, path: &Path) -> Result<(), RootfsError> {
    check_host_path(field, path)
}

/// Absolute, without `..` (which a lexical containment check could not
/// trust) and without NUL (which system calls would cut the path at).
fn check_host_path(field: &str, path: &Path) -> Result<(), RootfsError> {
    let reason = if !path.is_absolute() {
        "must be absolute"
    } else if path.components().any(|c| c == Component::ParentDir) {
        "must not contain '..'"
    } else if has_nul(path.as_os_str()) {
        "must not contain NUL"
    } else {
        return Ok(());
    };
    Err(RootfsError::invalid(field, path.display(), reason))
}

fn has_nul(s: &OsStr) -> bool {
    s.as_bytes().contains(&0)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use oci_spec::runtime::{
        LinuxBuilder, LinuxDeviceBuilder, MountBuilder, RootBuilder, SpecBuilder,
    };

    use super::*;
    use crate::engine::rootfs::tests::TempDir;

    fn bind(source: &Path, destination: &str) -> Mount {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap()
    }

    fn fs_mount(typ: &str, destination: &str, options: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(destination)
            .typ(typ)
            .source(typ)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    fn spec(mounts: Vec<Mount>, linux: LinuxBuilder) -> Spec {
        SpecBuilder::default()
            .root(RootBuilder::default().path("rootfs").build().unwrap())
            .mounts(mounts)
            .linux(linux.build().unwrap())
            .build()
            .unwrap()
    }

    /// An allowed root holding `vol/` plus a sibling `secret/` and a
    /// symlink `vol/escape -> ../secret`.
    fn roots() -> (TempDir, PathBuf) {
        let tmp = TempDir::new("validate");
        let allowed = tmp.path().join("allowed");
        fs::create_dir_all(allowed.join("vol")).unwrap();
        fs::create_dir_all(tmp.path().join("secret")).unwrap();
        std::os::unix::fs::symlink("../../secret", allowed.join("vol/escape")).unwrap();
        (tmp, allowed)
    }

    fn check(mounts: Vec<Mount>, linux: LinuxBuilder, allowed: &Path) -> Result<(), RootfsError> {
        validate_spec(&spec(mounts, linux), &[allowed.to_path_buf()])
    }

    fn assert_refused(result: Result<(), RootfsError>, field: &str) {
        let err = result.expect_err("accepted");
        assert!(err.is_invalid_argument(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{field}:")),
            "{msg} does not name {field}"
        );
    }

    fn no_linux() -> LinuxBuilder {
        LinuxBuilder::default()
    }

    #[test]
    fn a_good_spec_passes() {
        let (_tmp, allowed) = roots();
        let mounts = vec![
            fs_mount("proc", "/proc", &[]),
            fs_mount("tmpfs", "/dev", &["nosuid", "mode=755", "size=65536k"]),
            fs_mount(
                "devpts",
                "/dev/pts",
                &["newinstance", "ptmxmode=0666", "gid=5"],
            ),
            fs_mount("cgroup2", "/sys/fs/cgroup", &["ro"]),
            bind(&allowed.join("vol"), "/data"),
        ];
        let linux = LinuxBuilder::default()
            .rootfs_propagation("rslave")
            .masked_paths(vec!["/proc/kcore".to_string()])
            .readonly_paths(vec!["/proc/sys".to_string()])
            .devices(vec![LinuxDeviceBuilder::default()
                .path("/dev/fuse")
                .typ(LinuxDeviceType::C)
                .major(10)
                .minor(229)
                .build()
                .unwrap()]);
        check(mounts, linux, &allowed).unwrap();
    }

    #[test]
    fn destination_must_be_absolute_without_dotdot_and_not_root() {
        let (_tmp, allowed) = roots();
        for destination in ["relative/dir", "/a/../etc", "/", "/."] {
            let mounts = vec![
                fs_mount("proc", "/proc", &[]),
                fs_mount("tmpfs", destination, &[]),
            ];
            assert_refused(check(mounts, no_linux(), &allowed), "mounts[1].destination");
        }
    }

    #[test]
    fn bind_source_outside_the_allowed_roots_is_refused() {
        let (tmp, allowed) = roots();
        let outside = tmp.path().join("secret");
        assert_refused(
            check(vec![bind(&outside, "/x")], no_linux(), &allowed),
            "mounts[0].source",
        );
        // Lexically inside, but `..` could walk out of it.
        let dotdot = allowed.join("vol/../../secret");
        assert_refused(
            check(vec![bind(&dotdot, "/x")], no_linux(), &allowed),
            "mounts[0].source",
        );
        assert_refused(
            check(vec![bind(Path::new("vol"), "/x")], no_linux(), &allowed),
            "mounts[0].source",
        );
    }

    #[test]
    fn bind_source_through_an_escaping_symlink_is_refused() {
        let (_tmp, allowed) = roots();
        let result = check(
            vec![bind(&allowed.join("vol/escape"), "/x")],
            no_linux(),
            &allowed,
        );
        assert_refused(result, "mounts[0].source");
    }

    #[test]
    fn missing_bind_source_is_refused() {
        let (_tmp, allowed) = roots();
        let result = check(
            vec![bind(&allowed.join("vol/gone"), "/x")],
            no_linux(),
            &allowed,
        );
        assert_refused(result, "mounts[0].source");
    }

    #[test]
    fn bind_with_filesystem_data_is_refused() {
        let (_tmp, allowed) = roots();
        let mut m = bind(&allowed.join("vol"), "/x");
        m.set_options(Some(vec!["rbind".into(), "mode=755".into()]));
        assert_refused(check(vec![m], no_linux(), &allowed), "mounts[0].options[1]");
    }

    #[test]
    fn unknown_and_overlay_types_are_refused() {
        let (_tmp, allowed) = roots();
        for typ in ["ext4", "overlay", "nfs"] {
            let mounts = vec![fs_mount(typ, "/x", &[])];
            assert_refused(check(mounts, no_linux(), &allowed), "mounts[0].type");
        }
    }

    #[test]
    fn bad_option_is_refused() {
        let (_tmp, allowed) = roots();
        let mounts = vec![fs_mount("tmpfs", "/x", &["ro", "tmpcopyup"])];
        assert_refused(check(mounts, no_linux(), &allowed), "mounts[0].options[1]");
    }

    #[test]
    fn bad_masked_and_readonly_paths_are_refused() {
        let (_tmp, allowed) = roots();
        for bad in ["proc/kcore", "/proc/../etc/shadow"] {
            let linux = LinuxBuilder::default()
                .masked_paths(vec!["/proc/acpi".to_string(), bad.to_string()]);
            assert_refused(check(vec![], linux, &allowed), "linux.maskedPaths[1]");
            let linux = LinuxBuilder::default().readonly_paths(vec![bad.to_string()]);
            assert_refused(check(vec![], linux, &allowed), "linux.readonlyPaths[0]");
        }
    }

    #[test]
    fn bad_devices_are_refused() {
        let (_tmp, allowed) = roots();
        let device = |path: &str, typ, major| {
            LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(major)
                .minor(1)
                .build()
                .unwrap()
        };
        for (dev, field) in [
            (
                device("/etc/null", LinuxDeviceType::C, 1),
                "linux.devices[0].path",
            ),
            (
                device("/dev", LinuxDeviceType::C, 1),
                "linux.devices[0].path",
            ),
            (
                device("/dev/../x", LinuxDeviceType::C, 1),
                "linux.devices[0].path",
            ),
            (
                device("dev/x", LinuxDeviceType::C, 1),
                "linux.devices[0].path",
            ),
            (
                device("/dev/x", LinuxDeviceType::A, 1),
                "linux.devices[0].type",
            ),
            (
                device("/dev/x", LinuxDeviceType::B, -1),
                "linux.devices[0].major",
            ),
            (
                device("/dev/x", LinuxDeviceType::B, 5000),
                "linux.devices[0].major",
            ),
        ] {
            let linux = LinuxBuilder::default().devices(vec![dev]);
            assert_refused(check(vec![], linux, &allowed), field);
        }
    }

    #[test]
    fn unknown_root_propagation_is_refused() {
        let (_tmp, allowed) = roots();
        let linux = LinuxBuilder::default().rootfs_propagation("sideways");
        assert_refused(check(vec![], linux, &allowed), "linux.rootfsPropagation");
    }
}
