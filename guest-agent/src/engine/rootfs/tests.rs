//! Tests that really mount: each case runs in a re-executed copy of this
//! test binary that first unshares its mount namespace, so nothing it
//! mounts reaches the host. Needs root, overlayfs and /bin/busybox.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::mount::MsFlags;
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::makedev;
use oci_spec::runtime::Spec;

use super::overlay::OverlayApi;
use super::switch_root::SwitchRoot;
use super::*;

/// A scratch directory removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("husk-rootfs-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const CASE: &str = "HUSK_ROOTFS_TEST_CASE";
const DIR: &str = "HUSK_ROOTFS_TEST_DIR";
const CHILD_ENTRY: &str = "engine::rootfs::tests::child_entry";

/// The entry point of the re-executed child; does nothing unless run by
/// [`run_child`].
#[test]
#[ignore = "entry point of the mount-namespace child; run by the real_* tests"]
fn child_entry() {
    let case = std::env::var(CASE).expect("run by run_child");
    let dir = PathBuf::from(std::env::var(DIR).expect("run by run_child"));
    // This thread alone gets the new namespace; everything below runs on it.
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    match case.as_str() {
        "full" => full(&dir, SwitchRoot::Auto, OverlayApi::Auto, host_cgroup2()),
        "fallbacks" => {
            // Every fallback at once: move-root, mount(2) overlay data,
            // sysfs refused, no cgroup v2.
            mounts::REFUSE_SYSFS.store(true, Ordering::Relaxed);
            full(&dir, SwitchRoot::MoveRoot, OverlayApi::Legacy, None)
        }
        "vanished_source" => vanished_source(&dir),
        other => panic!("unknown case {other}"),
    }
    println!("CHILD-OK {case}");
}

/// Runs `case` in a child and returns its combined output, asserting it
/// succeeded.
fn run_child(case: &str, dir: &Path) -> String {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real rootfs tests need root"
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            CHILD_ENTRY,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE, case)
        .env(DIR, dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child {case} failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains(&format!("CHILD-OK {case}")),
        "child {case} did not finish:\n{text}"
    );
    text
}

/// Two image layers (the second overriding a file), upper/work, an empty
/// rootfs, and a host volume to bind.
fn fixture(dir: &Path) {
    let layer0 = dir.join("layer0");
    for sub in ["bin", "etc/secretdir", "proc", "sys", "dev"] {
        fs::create_dir_all(layer0.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", layer0.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "ls"] {
        symlink("busybox", layer0.join("bin").join(applet)).unwrap();
    }
    fs::write(layer0.join("etc/os-release"), "base").unwrap();
    fs::write(layer0.join("etc/override"), "from layer0").unwrap();
    fs::write(layer0.join("etc/secretdir/hidden"), "secret").unwrap();
    fs::write(layer0.join("etc/secretfile"), "secret").unwrap();
    // Escapes the rootfs if followed on the host.
    symlink("../../../../../../../../tmp", layer0.join("escape")).unwrap();
    let layer1 = dir.join("layer1");
    fs::create_dir_all(layer1.join("etc")).unwrap();
    fs::write(layer1.join("etc/override"), "from layer1").unwrap();
    for sub in ["upper", "work", "rootfs", "hostvol"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::write(dir.join("hostvol/data.txt"), "host data").unwrap();
    fs::write(dir.join("hostfile.txt"), "host file").unwrap();
    fs::write(dir.join("host-marker"), "only on the host").unwrap();
}

fn plan(dir: &Path) -> RootfsPlan {
    RootfsPlan {
        rootfs: dir.join("rootfs"),
        lower: vec![dir.join("layer0"), dir.join("layer1")],
        upper: dir.join("upper"),
        work: dir.join("work"),
        cgroup_dir: host_cgroup2(),
        bind_roots: vec![dir.canonicalize().unwrap()],
    }
}

/// The host's cgroup2 root, if any, standing in for a container's cgroup.
fn host_cgroup2() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// A name unique to one parent test, which it passes to its child.
fn probe_name(dir: &Path) -> String {
    let unique = dir.file_name().unwrap().to_string_lossy();
    format!("{unique}-escape-probe")
}

/// The spec of the full view. With `ask_rw` sysfs and the cgroup mount
/// are asked for read-write, for the fallbacks that must not grant it.
fn full_spec(dir: &Path, probe: &str, ask_rw: bool) -> Spec {
    let rw = if ask_rw { "rw" } else { "ro" };
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": { "path": "rootfs", "readonly": true },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", rw] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", rw] },
            { "destination": "/data", "type": "bind", "source": dir.join("hostvol"),
              "options": ["rbind", "ro", "nosuid", "nodev", "rprivate"] },
            { "destination": "/rro", "type": "bind", "source": dir.join("hostvol"),
              "options": ["rbind", "rro"] },
            { "destination": "/rw", "type": "bind", "source": dir.join("hostvol"),
              "options": ["rbind", "rw"] },
            { "destination": "/etc/hostfile", "type": "bind", "source": dir.join("hostfile.txt"),
              "options": ["bind", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "mode=1777"] },
            { "destination": format!("/escape/{probe}"), "type": "tmpfs", "source": "tmpfs" },
        ],
        "linux": {
            "maskedPaths": ["/proc/kcore", "/proc/timer_list", "/etc/secretdir",
                            "/etc/secretfile", "/proc/no-such-thing"],
            "readonlyPaths": ["/proc/sys", "/no/such/dir"],
            "devices": [
                { "path": "/dev/husk-null", "type": "c", "major": 1, "minor": 3,
                  "fileMode": 0o640, "uid": 0, "gid": 0 },
                { "path": "/dev/sub/husk-zero", "type": "c", "major": 1, "minor": 5 },
                { "path": "/dev/husk-fifo", "type": "p" },
            ],
        },
    });
    serde_json::from_value(spec).unwrap()
}

fn errno_of_write(path: &str) -> Option<i32> {
    fs::write(path, b"x").err().and_then(|e| e.raw_os_error())
}

/// Builds the full view and checks it from inside.
fn full(dir: &Path, switch: SwitchRoot, api: OverlayApi, cgroup: Option<PathBuf>) {
    let probe = probe_name(dir);
    // Only the fallbacks case moves the root.
    let fallbacks = switch == SwitchRoot::MoveRoot;
    let spec = full_spec(dir, &probe, fallbacks);
    validate(&spec, &[dir.to_path_buf()]).expect("validate");
    let exe = std::env::current_exe().unwrap();
    let marker = dir.join("host-marker");
    assert!(marker.exists() && exe.exists());
    let plan = RootfsPlan {
        cgroup_dir: cgroup.clone(),
        ..plan(dir)
    };
    // A volume with a submount, for the recursive read-only bind.
    let sub = dir.join("hostvol/sub");
    fs::create_dir_all(&sub).unwrap();
    sys::mount(
        Some(Path::new("tmpfs")),
        &sub,
        Some("tmpfs"),
        MsFlags::empty(),
        None,
    )
    .unwrap();
    let masked_proc_files = ["/proc/kcore", "/proc/timer_list"].map(|p| (p, Path::new(p).exists()));

    enter_with(&spec, &plan, switch, api).expect("enter");
    finalize(&spec).expect("finalize");

    assert_eq!(std::env::current_dir().unwrap(), Path::new("/"));
    assert!(Path::new("/proc/self/status").exists(), "no /proc");
    assert_eq!(fs::read_to_string("/etc/override").unwrap(), "from layer1");
    assert_eq!(fs::read_to_string("/etc/os-release").unwrap(), "base");
    assert!(Path::new("/bin/sh").exists());

    // Nothing of the host's filesystem is left in view.
    assert!(!marker.exists(), "host file {} visible", marker.display());
    assert!(!exe.exists(), "host file {} visible", exe.display());

    // The default /dev.
    let mut null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    null.write_all(b"gone").unwrap();
    let mut buf = Vec::new();
    assert_eq!(null.read_to_end(&mut buf).unwrap(), 0);
    let mut zeros = [1u8; 16];
    fs::File::open("/dev/zero")
        .unwrap()
        .read_exact(&mut zeros)
        .unwrap();
    assert_eq!(zeros, [0; 16]);
    for name in ["full", "random", "urandom", "tty"] {
        let meta = fs::metadata(format!("/dev/{name}")).unwrap();
        assert!(meta.file_type().is_char_device(), "/dev/{name}");
    }
    assert_eq!(fs::read_link("/dev/ptmx").unwrap(), Path::new("pts/ptmx"));
    assert!(Path::new("/dev/pts/ptmx").exists(), "no devpts");
    assert_eq!(
        fs::read_link("/dev/fd").unwrap(),
        Path::new("/proc/self/fd")
    );
    assert_eq!(
        fs::read_link("/dev/stderr").unwrap(),
        Path::new("/proc/self/fd/2")
    );
    assert!(fs::read_dir("/dev/mqueue").is_ok());

    // linux.devices.
    let meta = fs::metadata("/dev/husk-null").unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), makedev(1, 3));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    fs::write("/dev/husk-null", b"x").unwrap();
    let zero = fs::metadata("/dev/sub/husk-zero").unwrap();
    assert_eq!(zero.rdev(), makedev(1, 5));
    // The default mode, not cut down by the umask.
    assert_eq!(zero.permissions().mode() & 0o7777, 0o666);
    assert!(fs::metadata("/dev/husk-fifo")
        .unwrap()
        .file_type()
        .is_fifo());

    // Read-only root and bind; writable tmpfs.
    assert_eq!(errno_of_write("/newfile"), Some(libc::EROFS), "/ writable");
    assert_eq!(fs::read_to_string("/data/data.txt").unwrap(), "host data");
    assert_eq!(
        errno_of_write("/data/new"),
        Some(libc::EROFS),
        "ro bind writable"
    );
    // rro reaches the submount; a plain ro remount would not.
    assert_eq!(
        errno_of_write("/rro/new"),
        Some(libc::EROFS),
        "rro bind writable"
    );
    assert_eq!(
        errno_of_write("/rro/sub/new"),
        Some(libc::EROFS),
        "rro submount writable"
    );
    fs::write("/rw/sub/new", b"ok").unwrap();
    fs::write("/rw/new", b"ok").unwrap();
    assert_eq!(fs::read_to_string("/etc/hostfile").unwrap(), "host file");
    assert_eq!(
        errno_of_write("/etc/hostfile"),
        Some(libc::EROFS),
        "ro file bind writable"
    );
    fs::write("/tmp/scratch", b"ok").unwrap();
    fs::write("/dev/shm/scratch", b"ok").unwrap();
    let shm = fs::metadata("/dev/shm").unwrap();
    assert_eq!(shm.permissions().mode() & 0o7777, 0o1777);

    // The escaping symlink led into the rootfs (here: its /tmp tmpfs).
    assert!(
        Path::new(&format!("/tmp/{probe}")).is_dir(),
        "escape mount not inside"
    );

    // Masked and read-only paths.
    for (path, exists) in masked_proc_files {
        // Not every kernel has these; a missing one is left alone.
        if exists {
            assert_eq!(fs::read(path).unwrap(), b"", "{path} not masked");
        }
    }
    assert_eq!(fs::read("/etc/secretfile").unwrap(), b"", "file not masked");
    assert!(fs::metadata("/etc/secretfile")
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        fs::read_dir("/etc/secretdir").unwrap().count(),
        0,
        "dir not masked"
    );
    assert_eq!(errno_of_write("/etc/secretdir/x"), Some(libc::EROFS));
    assert!(Path::new("/proc/sys/kernel/hostname").exists());
    assert_eq!(
        errno_of_write("/proc/sys/kernel/hostname"),
        Some(libc::EROFS)
    );

    // sysfs (read-only as asked, or as the fallback makes it), and the
    // cgroup mount (read-only).
    assert!(Path::new("/sys/class").is_dir(), "no sysfs");
    assert_eq!(errno_of_write("/sys/husk-probe"), Some(libc::EROFS));
    match cgroup {
        Some(_) => {
            assert!(Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
            let wrote = errno_of_write("/sys/fs/cgroup/cgroup.subtree_control");
            assert_eq!(wrote, Some(libc::EROFS), "cgroup writable");
        }
        None => {
            assert_eq!(fs::read_dir("/sys/fs/cgroup").unwrap().count(), 0);
            let wrote = errno_of_write("/sys/fs/cgroup/x");
            assert_eq!(wrote, Some(libc::EROFS), "cgroup tmpfs writable");
        }
    }
}

fn vanished_source(dir: &Path) {
    let gone = dir.join("hostvol/gone");
    fs::create_dir_all(&gone).unwrap();
    let spec: Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "root": { "path": "rootfs" },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/vol", "type": "bind", "source": gone, "options": ["rbind"] },
        ],
    }))
    .unwrap();
    validate(&spec, &[dir.to_path_buf()]).expect("valid while the source exists");
    fs::remove_dir(&gone).unwrap();
    let err = enter(&spec, &plan(dir)).expect_err("enter with a vanished source");
    let msg = err.to_string();
    assert!(!err.is_invalid_argument(), "{msg}");
    assert!(msg.starts_with("mounts[1]:"), "{msg}");
    assert!(
        msg.contains("open bind source") && msg.contains("gone"),
        "{msg}"
    );
    println!("error was: {msg}");
}

/// The mount through the image's `escape -> ../../../tmp` symlink stayed
/// in the rootfs: followed on the host it would have made this directory.
fn assert_no_escape(dir: &Path) {
    let probe = Path::new("/tmp").join(probe_name(dir));
    assert!(
        !probe.exists(),
        "mount escaped to the host: {}",
        probe.display()
    );
}

/// Nothing the child mounted may show in the host's mount table.
fn assert_no_leak(dir: &Path) {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = dir.to_string_lossy();
    assert!(
        !table.contains(&*needle),
        "child mounts leaked to the host:\n{table}"
    );
}

#[test]
fn real_full_view_with_pivot_root() {
    let tmp = TempDir::new("real-full");
    fixture(tmp.path());
    run_child("full", tmp.path());
    assert_no_leak(tmp.path());
    assert_no_escape(tmp.path());
    // Mount points went to the writable layer, never to an image layer,
    // and the read-only root kept the rest of it clean.
    assert!(tmp.path().join("upper/etc/hostfile").exists());
    assert!(!tmp.path().join("layer0/etc/hostfile").exists());
    assert!(!tmp.path().join("upper/newfile").exists());
}

#[test]
fn real_fallbacks_move_root_legacy_overlay_sysfs_bind_no_cgroup2() {
    let tmp = TempDir::new("real-fallbacks");
    fixture(tmp.path());
    run_child("fallbacks", tmp.path());
    assert_no_leak(tmp.path());
    assert_no_escape(tmp.path());
}

#[test]
fn real_vanished_bind_source_names_the_mount() {
    let tmp = TempDir::new("real-vanished");
    fixture(tmp.path());
    let out = run_child("vanished_source", tmp.path());
    assert!(out.contains("error was: mounts[1]:"), "{out}");
    assert_no_leak(tmp.path());
}
