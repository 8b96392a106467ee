//! Building the L1 test host from Debian packages, cached by their versions.
//!
//! L1 boots Debian's cloud kernel with a tiny busybox initramfs that loads
//! the KVM, virtio and vhost-vsock modules, mounts two ext4 disks and runs
//! the command:
//! - the *system disk* (read-only, cached): QEMU with its shared libraries
//!   and firmware, laid out under `usr/` so `/usr`, `/lib` and `/lib64`
//!   symlinks make it runnable unchanged;
//! - the *payload disk* (per run): the files of the [`super::Payload`] and
//!   the command line.
//!
//! Disks rather than a bigger initramfs: L1's unpacking of a 31 MB initramfs
//! cost about 2 s per start under emulation (RIG.md).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use cpio::newc::Builder as CpioEntry;

use crate::debian;

use super::vmlinux;

/// Debian packages the rig needs on the outer host.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "lz4",
    "e2fsprogs",
    "kmod",
];

/// The meta package whose dependency names the cloud kernel we boot as L1.
const CLOUD_KERNEL_META: &str = "linux-image-cloud-amd64";

/// Modules L1 loads, dependencies first (resolved from `modules.dep`).
const L1_MODULES: &[&str] = &["kvm-amd", "virtio_mmio", "virtio_blk", "vhost_vsock"];

/// QEMU firmware files an x86 microvm may load.
const QEMU_FIRMWARE: &[&str] = &[
    "bios-microvm.bin",
    "qboot.rom",
    "pvh.bin",
    "linuxboot.bin",
    "linuxboot_dma.bin",
    "multiboot.bin",
    "multiboot_dma.bin",
    "kvmvapic.bin",
    "bios-256k.bin",
    "bios.bin",
];

/// Files written into the system disk's root to tell the disks apart.
pub const SYSTEM_DISK_TAG: &str = ".husk-rig-system";
pub const PAYLOAD_DISK_TAG: &str = ".husk-rig-payload";

/// L1's /init: load modules, mount the disks, run the command, report its
/// status on the console, power off.
const L1_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /rig/sys /rig/run /rig/probe
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
stty -F /dev/console -onlcr 2>/dev/null
fail() { echo "husk-rig: $*"; echo "HUSK-RIG-EXIT 125"; poweroff -f; }
echo "husk-rig: L1 up after $(cut -d' ' -f1 /proc/uptime) s"
for m in $(cat /modules/order); do
  insmod "/modules/$m" || fail "insmod $m failed"
done
for dev in /dev/vd?; do
  mount -t ext4 -o ro "$dev" /rig/probe || continue
  if [ -e /rig/probe/.husk-rig-system ]; then
    umount /rig/probe; mount -t ext4 -o ro "$dev" /rig/sys
  elif [ -e /rig/probe/.husk-rig-payload ]; then
    umount /rig/probe; mount -t ext4 "$dev" /rig/run
  else
    umount /rig/probe
  fi
done
[ -e /rig/sys/.husk-rig-system ] || fail "system disk not found"
[ -e /rig/run/.husk-rig-payload ] || fail "payload disk not found"
ln -s /rig/sys/usr /usr
ln -s usr/lib /lib
ln -s usr/lib64 /lib64
[ -e /dev/kvm ] || fail "no /dev/kvm in L1 (kvm-amd did not load: no SVM?)"
echo "husk-rig: KVM ready after $(cut -d' ' -f1 /proc/uptime) s"
export HUSK_RIG_DIR=/rig/run HUSK_RIG_MODE=nested HOME=/root
mkdir -p /root
cd /rig/run
sh /rig/run/.husk-rig-run
cd /
sync
umount /rig/run
poweroff -f
"#;

/// Bump when the way L1 is assembled changes, to invalidate the cache.
const RECIPE: &str = "l1-v2";

/// Everything needed to boot L1.
#[derive(Debug, Clone)]
pub struct L1Assets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub system_disk: PathBuf,
}

/// Builds (or reuses from the cache) the L1 assets.
pub fn prepare() -> anyhow::Result<L1Assets> {
    debian::ensure_installed(HOST_PACKAGES)?;
    let kernel_pkg = debian::versioned_dependency(CLOUD_KERNEL_META, "linux-image-6")?;
    let kernel_version = debian::candidate_version(&kernel_pkg)?;
    let qemu = debian::installed_version("qemu-system-x86").context("qemu-system-x86 missing")?;
    let busybox = debian::installed_version("busybox-static").context("busybox-static missing")?;
    let key = crate::cache::key(&[
        (
            "kernel",
            format!("{kernel_pkg}={kernel_version}").as_bytes(),
        ),
        ("qemu", qemu.as_bytes()),
        ("busybox", busybox.as_bytes()),
        ("init", L1_INIT.as_bytes()),
        ("modules", L1_MODULES.join(",").as_bytes()),
        ("recipe", RECIPE.as_bytes()),
    ]);
    let entry = crate::cache::root().join("rig").join(&key);
    let assets = L1Assets {
        kernel: entry.join("vmlinux"),
        initramfs: entry.join("l1.cpio"),
        system_disk: entry.join("system.ext4"),
    };
    if entry.join("complete").exists() {
        return Ok(assets);
    }
    eprintln!("husk: building the rig's L1 host ({kernel_pkg} {kernel_version}, qemu {qemu})");
    let work = entry.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    build(&kernel_pkg, &work)?;
    let _ = std::fs::remove_dir_all(&entry);
    std::fs::rename(&work, &entry)?;
    std::fs::write(entry.join("complete"), key)?;
    Ok(assets)
}

fn build(kernel_pkg: &str, work: &Path) -> anyhow::Result<()> {
    let deb = debian::download(kernel_pkg, &work.join("deb"))?;
    let tree = work.join("kernel-tree");
    debian::unpack(&deb, &tree)?;
    let release = kernel_release(&tree)?;
    vmlinux::extract(
        &tree.join(format!("boot/vmlinuz-{release}")),
        &work.join("vmlinux"),
    )?;
    let modules = resolve_modules(&tree, &release, L1_MODULES)?;
    write_initramfs(&modules, &work.join("l1.cpio"))?;
    write_system_disk(work, &work.join("system.ext4"))?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::remove_dir_all(work.join("deb"))?;
    Ok(())
}

fn kernel_release(tree: &Path) -> anyhow::Result<String> {
    let dir = tree.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("no {dir:?} in the kernel package"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!("expected one kernel release in {dir:?}, found {n}"),
    }
}

/// Module files (absolute) for `wanted`, each after its dependencies.
fn resolve_modules(tree: &Path, release: &str, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let status = Command::new("depmod")
        .arg("-b")
        .arg(tree)
        .arg(release)
        .status()
        .context("cannot run depmod (Debian package kmod)")?;
    if !status.success() {
        bail!("depmod on the cloud kernel failed: {status}");
    }
    let moddir = tree.join("lib/modules").join(release);
    let deps = std::fs::read_to_string(moddir.join("modules.dep"))?;
    let order = module_load_order(&deps, wanted)?;
    Ok(order.into_iter().map(|m| moddir.join(m)).collect())
}

/// Orders the modules named in `wanted` and their dependencies from a
/// `modules.dep` text so that each comes after everything it needs.
pub fn module_load_order(modules_dep: &str, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let table: Vec<(String, Vec<String>)> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect();
    let lookup = |name: &str| -> anyhow::Result<&(String, Vec<String>)> {
        let want = name.replace('-', "_");
        table
            .iter()
            .find(|(path, _)| {
                let file = path.rsplit('/').next().unwrap_or(path);
                file.strip_suffix(".ko").map(|s| s.replace('-', "_")) == Some(want.clone())
            })
            .with_context(|| format!("module {name} not in modules.dep"))
    };
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        let (path, deps) = lookup(name)?;
        // modules.dep lists a module's dependencies with the ones it needs
        // most directly first; loading them in reverse loads leaves first.
        for dep in deps.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(dep) {
                order.push(dep.clone());
            }
        }
    }
    Ok(order)
}

fn cpio_file(name: &str, mode: u32, bytes: Vec<u8>) -> (CpioEntry, Cursor<Vec<u8>>) {
    let entry = CpioEntry::new(name)
        .mode(mode)
        .uid(0)
        .gid(0)
        .mtime(0)
        .nlink(1);
    (entry, Cursor::new(bytes))
}

fn cpio_dir(name: &str) -> (CpioEntry, Cursor<Vec<u8>>) {
    let entry = CpioEntry::new(name)
        .mode(0o040755)
        .uid(0)
        .gid(0)
        .mtime(0)
        .nlink(2);
    (entry, Cursor::new(Vec::new()))
}

fn write_initramfs(modules: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("busybox-static is not installed")?;
    let mut entries = vec![
        cpio_dir("bin"),
        cpio_dir("dev"),
        cpio_dir("proc"),
        cpio_dir("sys"),
        cpio_dir("modules"),
        (
            CpioEntry::new("dev/console")
                .mode(0o020600)
                .rdev_major(5)
                .rdev_minor(1)
                .nlink(1),
            Cursor::new(Vec::new()),
        ),
        cpio_file("bin/busybox", 0o100755, busybox),
        cpio_file("init", 0o100755, L1_INIT.as_bytes().to_vec()),
    ];
    let mut order = String::new();
    for module in modules {
        let name = module.file_name().unwrap().to_string_lossy().into_owned();
        order.push_str(&name);
        order.push('\n');
        let bytes = std::fs::read(module).with_context(|| format!("cannot read {module:?}"))?;
        entries.push(cpio_file(&format!("modules/{name}"), 0o100644, bytes));
    }
    entries.push(cpio_file("modules/order", 0o100644, order.into_bytes()));
    let file = std::fs::File::create(out)?;
    cpio::write_cpio(entries.into_iter(), std::io::BufWriter::new(file))?;
    Ok(())
}

/// Where a host library or program goes in the system disk: everything
/// under `usr/`, as on a merged-/usr Debian.
fn system_disk_path(host_path: &Path) -> PathBuf {
    let rel = host_path.strip_prefix("/").unwrap_or(host_path);
    let rel = rel.strip_prefix("usr").unwrap_or(rel);
    Path::new("usr").join(rel)
}

/// The shared libraries `program` loads, from `ldd`.
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd")?;
    if !out.status.success() {
        bail!("ldd {program:?} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn write_system_disk(work: &Path, out: &Path) -> anyhow::Result<()> {
    let stage = work.join("system");
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let mut files = vec![qemu.to_path_buf()];
    files.extend(shared_libraries(qemu)?);
    for name in QEMU_FIRMWARE {
        let path = Path::new("/usr/share/qemu").join(name);
        if path.exists() {
            files.push(path);
        }
    }
    for file in &files {
        let dest = stage.join(system_disk_path(file));
        std::fs::create_dir_all(dest.parent().unwrap())?;
        // fs::copy follows symlinks: firmware links into /usr/share/seabios
        // and library soname links arrive as the files they name.
        std::fs::copy(file, &dest).with_context(|| format!("cannot copy {file:?}"))?;
    }
    std::fs::write(stage.join(SYSTEM_DISK_TAG), b"")?;
    make_ext4(&stage, out, "husk-sys")?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

/// Makes an ext4 image holding `dir`, sized to fit with room to spare.
pub fn make_ext4(dir: &Path, out: &Path, label: &str) -> anyhow::Result<()> {
    let bytes = dir_size(dir)?;
    let mib = bytes / (1 << 20) * 5 / 4 + 16;
    let status = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-L",
            label,
            "-d",
        ])
        .arg(dir)
        .arg(out)
        .arg(format!("{mib}M"))
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run mkfs.ext4 (Debian package e2fsprogs)")?;
    if !status.success() {
        bail!("mkfs.ext4 -d {dir:?} failed: {status}");
    }
    Ok(())
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/vhost/vhost_vsock.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/vhost/vhost.ko kernel/drivers/vhost/vhost_iotlb.ko kernel/net/vmw_vsock/vsock.ko
";

    #[test]
    fn dependencies_load_before_the_modules_that_need_them() {
        let order = module_load_order(DEP, &["kvm-amd", "vhost_vsock"]).unwrap();
        let pos = |m: &str| order.iter().position(|p| p.ends_with(m)).unwrap();
        assert!(pos("irqbypass.ko") < pos("kvm.ko"));
        assert!(pos("kvm.ko") < pos("kvm-amd.ko"));
        assert!(pos("vsock.ko") < pos("vmw_vsock_virtio_transport_common.ko"));
        assert!(pos("vhost.ko") < pos("vhost_vsock.ko"));
        assert_eq!(order.len(), 8, "each module once: {order:?}");
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let err = module_load_order(DEP, &["nosuch"]).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
    }

    #[test]
    fn init_script_uses_the_names_the_host_side_writes() {
        // The init is shell text, so it spells these out; this keeps the two
        // sides from drifting apart.
        for tag in [SYSTEM_DISK_TAG, PAYLOAD_DISK_TAG] {
            assert!(L1_INIT.contains(&format!("/rig/probe/{tag} ")), "{tag}");
        }
        assert!(L1_INIT.contains(&format!("/rig/sys/{SYSTEM_DISK_TAG} ")));
        assert!(L1_INIT.contains(&format!("/rig/run/{PAYLOAD_DISK_TAG} ")));
        assert!(L1_INIT.contains(&format!("sh /rig/run/{}\n", super::super::RUNNER_FILE)));
    }

    #[test]
    fn host_paths_land_under_usr() {
        assert_eq!(
            system_disk_path(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            Path::new("usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            system_disk_path(Path::new("/usr/bin/qemu-system-x86_64")),
            Path::new("usr/bin/qemu-system-x86_64")
        );
        assert_eq!(
            system_disk_path(Path::new("/lib64/ld-linux-x86-64.so.2")),
            Path::new("usr/lib64/ld-linux-x86-64.so.2")
        );
    }
}
