//! A busybox image layer and a `runc spec`-like OCI runtime spec: the
//! smallest real container husk-agent (or runc, for comparison) can run.
//!
//! The layer is a plain folder, usable both as an overlay lower layer under
//! the agent's shared folder and (copied) as a runc bundle's rootfs. It
//! holds Debian's statically linked busybox, so it needs no libraries.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use crate::debian;

/// The Debian package whose binary the layer holds.
const PACKAGE: &str = "busybox-static";

/// Where [`PACKAGE`] installs its binary (`dpkg -L busybox-static`).
const HOST_BUSYBOX: &str = "/bin/busybox";

/// Marks a complete layer; its content names what the layer was built from,
/// so a layer built by an older layout or busybox is rebuilt, not reused.
const STAMP: &str = ".husk-layer";

/// Bump when the layer's content changes, to rebuild existing layers.
const LAYOUT_VERSION: u32 = 1;

/// root, nobody, and an unprivileged `husk` user whose extra group lets
/// tests check supplementary groups.
pub const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
husk:x:1000:1000:husk:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

/// `tty` (5) is the gid the spec's devpts mount gives terminals.
pub const GROUP: &str = "\
root:x:0:
tty:x:5:
husk:x:1000:
husk-extra:x:1001:husk
nogroup:x:65534:
";

const HOSTS: &str = "\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
";

/// Builds the busybox layer at `dir` unless a complete one of the same
/// content is already there; installs busybox-static first if needed.
///
/// The layer is built in a sibling folder and renamed into place, so `dir`
/// is either absent or complete, even when a build dies half-way or two
/// builds race (the loser drops its copy).
pub fn build_layer(dir: &Path) -> anyhow::Result<()> {
    build_layer_from(&host_binary()?, dir)
}

/// This machine's static busybox, installing Debian's busybox-static first
/// if needed.
pub fn host_binary() -> anyhow::Result<PathBuf> {
    debian::ensure_installed(&[PACKAGE])?;
    Ok(PathBuf::from(HOST_BUSYBOX))
}

/// [`build_layer`] from a given static busybox binary, without touching
/// packages: what the rig's L1 host does with the busybox the payload
/// carries.
pub fn build_layer_from(busybox: &Path, dir: &Path) -> anyhow::Result<()> {
    let stamp = stamp_text();
    if is_built(dir, &stamp) {
        return Ok(());
    }
    let tmp = sibling(dir, &format!("tmp{}", std::process::id()))?;
    let _ = fs::remove_dir_all(&tmp);
    populate(&tmp, busybox)
        .with_context(|| format!("cannot build a busybox layer in {}", tmp.display()))?;
    fs::write(tmp.join(STAMP), &stamp)?;
    if dir.exists() && !is_built(dir, &stamp) {
        // Stale (older layout or busybox) or left half-way by hand.
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    match fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        Err(_) if is_built(dir, &stamp) => {
            // Another build won the race with the same content.
            fs::remove_dir_all(&tmp)?;
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
        }
    }
}

/// What a complete layer's stamp says: the layout and busybox versions.
fn stamp_text() -> String {
    let busybox = debian::installed_version(PACKAGE).unwrap_or_default();
    format!("layout={LAYOUT_VERSION} {PACKAGE}={busybox}\n")
}

fn is_built(dir: &Path, stamp: &str) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp)
}

/// `<parent>/.<name>.<suffix>`: a scratch path on the same filesystem as
/// `dir`, so renaming it onto `dir` is atomic.
fn sibling(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no folder name", dir.display()))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    Ok(parent.join(format!(".{}.{suffix}", name.to_string_lossy())))
}

/// Writes the layer's whole tree into the empty folder `root`.
fn populate(root: &Path, source: &Path) -> anyhow::Result<()> {
    for dir in ["bin", "etc", "proc", "sys", "dev", "root", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    // Modes set explicitly: create_dir_all's are cut by the umask.
    fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700))?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    let busybox = root.join("bin/busybox");
    fs::copy(source, &busybox).with_context(|| format!("cannot copy {}", source.display()))?;
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755))?;
    link_applets(root, source)?;
    fs::write(root.join("etc/passwd"), PASSWD)?;
    fs::write(root.join("etc/group"), GROUP)?;
    fs::write(root.join("etc/hosts"), HOSTS)?;
    Ok(())
}

/// A relative `bin/<applet> -> busybox` symlink per applet busybox
/// lists, so every name it answers to is on PATH.
///
/// The applets are listed by the source binary, not the fresh copy: a
/// thread of the same process forking while the copy's write fd is open
/// would make exec'ing the copy fail with ETXTBSY.
fn link_applets(root: &Path, source: &Path) -> anyhow::Result<()> {
    let applets = applets(source)?;
    ensure!(
        ["sh", "true", "sleep", "cat"]
            .iter()
            .all(|a| applets.iter().any(|b| b == a)),
        "busybox lists no sh, true, sleep or cat applet: {applets:?}"
    );
    for applet in applets.iter().filter(|a| *a != "busybox") {
        symlink("busybox", root.join("bin").join(applet))
            .with_context(|| format!("cannot link applet {applet}"))?;
    }
    Ok(())
}

/// The applet names `busybox --list` prints, one a line.
fn applets(busybox: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("cannot run {} --list", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed: {}", busybox.display(), out.status);
    }
    applet_list(out.stdout)
}

/// Parses `busybox --list` output: one applet name a line, each usable as
/// a file name in bin/.
pub(crate) fn applet_list(stdout: Vec<u8>) -> anyhow::Result<Vec<String>> {
    let text = String::from_utf8(stdout).context("busybox --list printed non-UTF-8")?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    // A name with a slash would link outside bin/.
    ensure!(
        names
            .iter()
            .all(|n| !n.contains('/') && n != "." && n != ".."),
        "busybox --list printed an unusable name"
    );
    Ok(names)
}

/// containerd's default capability set (CRI pods get it), which includes
/// the three `runc spec` grants; tests that chown, setuid or bind low ports
/// need the wider set.
const CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// `runc spec`'s masked paths: kernel state a container must not read.
const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// `runc spec`'s read-only paths: kernel knobs a container must not write.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// An OCI Process running `args` as root in `/`, without a terminal, with
/// [`CAPABILITIES`] (none inheritable or ambient), 1024 open files and
/// no_new_privs: the process of [`default_spec`], and what ExecProcess takes.
pub fn default_process(args: &[&str]) -> Value {
    json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm"
        ],
        "cwd": "/",
        "capabilities": {
            "bounding": CAPABILITIES,
            "effective": CAPABILITIES,
            "permitted": CAPABILITIES,
            "inheritable": [],
            "ambient": []
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true
    })
}

/// An OCI runtime spec (config.json) running `args` in the layer, shaped
/// like `runc spec`'s: a writable `rootfs`, the usual /proc, /dev, /sys
/// mounts, masked and read-only paths. It has pid, ipc, uts and mount
/// namespaces but no network one, because a pod's containers share the
/// sandbox's network; and no resources, so no cgroup limits apply.
pub fn default_spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": default_process(args),
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "husk",
        "mounts": mounts(),
        "linux": {
            "namespaces": [
                { "type": "pid" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" }
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "resources": {}
        }
    })
}

/// `runc spec`'s mounts.
fn mounts() -> Value {
    json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        {
            "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]
        },
        {
            "destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
        },
        {
            "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        },
        {
            "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"]
        },
        {
            "destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"]
        },
        {
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
        }
    ])
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};

    use super::*;

    fn parse(spec: &Value) -> Spec {
        serde_json::from_value(spec.clone()).expect("default_spec is not a valid OCI spec")
    }

    #[test]
    fn default_spec_is_a_valid_oci_spec() {
        let spec = parse(&default_spec(&["/bin/echo", "hi"]));
        assert_eq!(spec.version(), "1.0.2");
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_deref(),
            Some(&["/bin/echo".to_string(), "hi".to_string()][..])
        );
        assert!(!process.terminal().unwrap());
        assert_eq!(process.no_new_privileges(), Some(true));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(false));
        assert_eq!(spec.hostname().as_deref(), Some("husk"));
        let destinations: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
    }

    #[test]
    fn parsing_as_a_spec_catches_mistakes() {
        let mut spec = default_spec(&["/bin/true"]);
        spec["process"]["capabilities"]["bounding"][0] = json!("CAP_NOT_A_CAPABILITY");
        assert!(serde_json::from_value::<Spec>(spec).is_err());
        let mut spec = default_spec(&["/bin/true"]);
        spec["linux"]["namespaces"][0]["type"] = json!("pidd");
        assert!(serde_json::from_value::<Spec>(spec).is_err());
    }

    #[test]
    fn default_spec_shares_the_sandbox_network() {
        let spec = parse(&default_spec(&["/bin/true"]));
        let linux = spec.linux().as_ref().unwrap();
        let mut kinds: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        kinds.sort_by_key(|k| format!("{k:?}"));
        let mut expected = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ];
        expected.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(kinds, expected);
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 10);
        assert_eq!(linux.readonly_paths().as_ref().unwrap().len(), 5);
    }

    #[test]
    fn default_process_grants_containerds_capabilities_only() {
        let spec = parse(&default_spec(&["/bin/true"]));
        let process = spec.process().as_ref().unwrap();
        let caps = process.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), CAPABILITIES.len());
        assert!(bounding.contains(&Capability::Kill));
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        // ExecProcess takes the same object on its own.
        assert_eq!(default_spec(&["x"])["process"], default_process(&["x"]));
    }

    /// [`build_layer`], one test at a time: a first build may apt-get
    /// install busybox-static, and parallel apt-gets fight over dpkg's lock.
    fn build(layer: &Path) {
        static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
        build_layer(layer).unwrap();
    }

    /// A fresh folder under the system temp dir for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-busybox-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs an applet of the built layer (by its symlink, as PATH lookup in
    /// the container would) and returns its exit code and stdout.
    fn run(layer: &Path, applet: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(layer.join("bin").join(applet))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        (out.status.code().unwrap(), stdout)
    }

    #[test]
    fn built_layer_runs_busybox_and_its_applets() {
        let scratch = scratch("runs");
        let layer = scratch.join("busybox");
        build(&layer);
        let status = Command::new(layer.join("bin/busybox"))
            .arg("true")
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(run(&layer, "true", &[]).0, 0);
        assert_eq!(run(&layer, "false", &[]).0, 1);
        assert_eq!(run(&layer, "echo", &["hi"]), (0, "hi\n".to_string()));
        let passwd = layer.join("etc/passwd");
        let (_, names) = run(&layer, "cut", &["-d:", "-f1,3", passwd.to_str().unwrap()]);
        assert_eq!(names, "root:0\nhusk:1000\nnobody:65534\n");
        for applet in ["sh", "sleep", "id", "env", "ls", "dd", "ps", "kill", "stat"] {
            let link = fs::read_link(layer.join("bin").join(applet)).unwrap();
            assert_eq!(link, Path::new("busybox"), "{applet}");
        }
        fs::remove_dir_all(&scratch).unwrap();
    }

    #[test]
    fn built_layer_has_the_system_folders_and_files() {
        let scratch = scratch("tree");
        let layer = scratch.join("busybox");
        build(&layer);
        let mode = |p: &str| fs::metadata(layer.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        assert_eq!(mode("bin/busybox"), 0o755);
        for dir in ["proc", "sys", "dev", "tmp"] {
            assert_eq!(fs::read_dir(layer.join(dir)).unwrap().count(), 0, "{dir}");
        }
        let group = fs::read_to_string(layer.join("etc/group")).unwrap();
        assert!(group.contains("husk-extra:x:1001:husk\n"), "{group}");
        let hosts = fs::read_to_string(layer.join("etc/hosts")).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
        fs::remove_dir_all(&scratch).unwrap();
    }

    #[test]
    fn build_layer_reuses_a_complete_layer_and_replaces_a_stale_one() {
        let scratch = scratch("reuse");
        let layer = scratch.join("busybox");
        build(&layer);
        let marker = layer.join("tmp/marker");
        fs::write(&marker, "kept").unwrap();
        build(&layer);
        assert!(marker.exists(), "a complete layer was rebuilt");

        fs::write(layer.join(STAMP), "layout=0\n").unwrap();
        build(&layer);
        assert!(!marker.exists(), "a stale layer was kept");
        assert_eq!(fs::read_to_string(layer.join(STAMP)).unwrap(), stamp_text());
        // No scratch sibling is left behind.
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 1);
        fs::remove_dir_all(&scratch).unwrap();
    }
}
