//! Builds our guest kernel (`kernel-config/`) into an ELF vmlinux.
//!
//! Recipe: Debian's `linux-source-6.1` tarball, `make tinyconfig`, our
//! fragment merged on top (`merge_config.sh -m`), `make olddefconfig`, a check
//! that every option the fragment sets survived, then `make vmlinux`.
//!
//! Two caches, both under [`crate::cache::root`]:
//! - `kernel/<key>/{vmlinux,config}`: finished kernels, keyed by the fragment,
//!   the source package version, the compiler and [`RECIPE`].
//! - `linux-src/<key>/{source,build}`: the unpacked source tree (keyed by the
//!   source package version only) and its kbuild output folder. Every kernel
//!   built from that version reuses it, so a config change rebuilds only what
//!   it touches. Builds take a lock on it, so they run one at a time.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{cache, cmd};

/// Bump when the build steps change in a way that changes the vmlinux.
const RECIPE: &str = "kernel-recipe-1";

/// Bump when the way the source tree is unpacked changes.
const UNPACK_RECIPE: &str = "unpack-1";

const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// What building vmlinux needs on a fresh Debian 12 machine.
const BUILD_PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev", // objtool
    "xz-utils",
    "cpio",
];

/// Builds (or reuses from the cache) vmlinux and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    husk_tests::debian::ensure_installed(BUILD_PACKAGES)?;
    let fragment_path = fragment_path();
    let fragment = fs::read_to_string(&fragment_path)
        .with_context(|| format!("cannot read the kernel config fragment {fragment_path:?}"))?;
    let wanted = parse_fragment(&fragment)
        .with_context(|| format!("bad kernel config fragment {fragment_path:?}"))?;
    let version = husk_tests::debian::installed_version(SOURCE_PACKAGE)
        .with_context(|| format!("{SOURCE_PACKAGE} is not installed"))?;
    let compiler = compiler_version()?;

    let key = cache::key(&[
        ("fragment", fragment.as_bytes()),
        ("linux-source", version.as_bytes()),
        ("compiler", compiler.as_bytes()),
        ("recipe", RECIPE.as_bytes()),
    ]);
    let entry = cache::entry("kernel", &key);
    let vmlinux = entry.join("vmlinux");
    if vmlinux.is_file() {
        eprintln!("husk: kernel {key} reused: {}", vmlinux.display());
        return Ok(vmlinux);
    }

    let tree_key = cache::key(&[
        ("linux-source", version.as_bytes()),
        ("unpack", UNPACK_RECIPE.as_bytes()),
    ]);
    let tree = cache::entry("linux-src", &tree_key);
    fs::create_dir_all(&tree).with_context(|| format!("cannot create {tree:?}"))?;
    let _lock = TreeLock::acquire(tree.join("lock"))?;
    // Someone may have built this very kernel while we waited for the lock.
    if vmlinux.is_file() {
        eprintln!("husk: kernel {key} reused: {}", vmlinux.display());
        return Ok(vmlinux);
    }

    let started = Instant::now();
    let source = unpack_source(&tree, &version)?;
    let out = tree.join("build");
    fs::create_dir_all(&out)?;
    // Merge the very bytes the key was computed from, even if the file is
    // edited meanwhile.
    let merged_fragment = out.join("husk-fragment.config");
    fs::write(&merged_fragment, &fragment)?;
    eprintln!(
        "husk: configuring the kernel: tinyconfig + {}",
        fragment_path.display()
    );
    configure(&source, &out, &merged_fragment)?;

    let final_config = fs::read_to_string(out.join(".config"))
        .with_context(|| format!("kbuild left no .config in {out:?}"))?;
    let dropped = dropped_options(&wanted, &parse_config(&final_config));
    if !dropped.is_empty() {
        let list: Vec<String> = dropped.iter().map(|d| format!("  {d}")).collect();
        bail!(
            "{} option(s) set in {} did not survive `make olddefconfig` (unmet \
             dependencies, or overridden by another option; look them up with `/` in \
             `make -C {} O={} menuconfig`):\n{}",
            dropped.len(),
            fragment_path.display(),
            source.display(),
            out.display(),
            list.join("\n")
        );
    }

    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("husk: building vmlinux (linux-source {version}, make -j{jobs})");
    cmd::run(
        kbuild(&source, &out)
            .arg(format!("-j{jobs}"))
            .arg("vmlinux"),
    )?;

    publish(&out, &entry)?;
    eprintln!(
        "husk: kernel {key} built in {:.0?}: {}",
        started.elapsed(),
        vmlinux.display()
    );
    Ok(vmlinux)
}

/// `kernel-config/husk.config` in this workspace.
fn fragment_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .join("kernel-config")
        .join("husk.config")
}

/// The first line of `gcc --version`: a compiler update changes the kernel.
fn compiler_version() -> anyhow::Result<String> {
    let text = cmd::output(Command::new("gcc").arg("--version"))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Unpacks the source tarball into `<tree>/source` once and returns that path.
/// The tree is renamed into place only when tar succeeded.
fn unpack_source(tree: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let source = tree.join("source");
    if source.join("Makefile").is_file() {
        return Ok(source);
    }
    let partial = tree.join("source.partial");
    remove_dir_if_present(&partial)?;
    remove_dir_if_present(&source)?;
    fs::create_dir_all(&partial)?;
    eprintln!(
        "husk: unpacking {SOURCE_PACKAGE} {version} into {}",
        source.display()
    );
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(SOURCE_TARBALL)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&partial),
    )?;
    if !partial.join("Makefile").is_file() {
        bail!("{SOURCE_TARBALL} did not unpack into a kernel tree (no Makefile in {partial:?})");
    }
    fs::rename(&partial, &source)?;
    Ok(source)
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {dir:?}"))
        }
        _ => Ok(()),
    }
}

/// `make` in `source` with output in `out`, for x86_64, with a fixed build
/// stamp so that identical inputs give an identical vmlinux (`uname -v`).
fn kbuild(source: &Path, out: &Path) -> Command {
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(source)
        .arg(format!("O={}", out.display()))
        .arg("ARCH=x86_64")
        .env("KBUILD_BUILD_USER", "husk")
        .env("KBUILD_BUILD_HOST", "husk")
        .env("KBUILD_BUILD_VERSION", "1")
        .env("KBUILD_BUILD_TIMESTAMP", RECIPE)
        .env_remove("KCONFIG_CONFIG")
        .env_remove("CROSS_COMPILE");
    make
}

/// tinyconfig, our fragment on top, then olddefconfig, in `out/.config`.
/// kconfig's chatter is shown only when a step fails.
fn configure(source: &Path, out: &Path, fragment: &Path) -> anyhow::Result<()> {
    cmd::output(kbuild(source, out).arg("tinyconfig"))?;
    let config = out.join(".config");
    cmd::output(
        Command::new(source.join("scripts/kconfig/merge_config.sh"))
            .arg("-m")
            .arg("-O")
            .arg(out)
            .arg(&config)
            .arg(fragment)
            .current_dir(source)
            .env("ARCH", "x86_64")
            .env_remove("KCONFIG_CONFIG"),
    )?;
    cmd::output(kbuild(source, out).arg("olddefconfig"))?;
    Ok(())
}

/// Copies vmlinux and its .config into the cache entry. vmlinux is renamed
/// into place last: an entry with a vmlinux is complete.
fn publish(out: &Path, entry: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(entry).with_context(|| format!("cannot create {entry:?}"))?;
    let pid = std::process::id();
    for (from, to) in [(".config", "config"), ("vmlinux", "vmlinux")] {
        let tmp = entry.join(format!(".{to}.tmp{pid}"));
        fs::copy(out.join(from), &tmp)
            .with_context(|| format!("cannot copy {from} from {out:?} to {tmp:?}"))?;
        fs::rename(&tmp, entry.join(to))?;
    }
    Ok(())
}

/// A lock file holding the owner's pid, so that two builds never share the
/// source tree at once. A lock whose owner is gone is taken over.
struct TreeLock {
    path: PathBuf,
}

impl TreeLock {
    fn acquire(path: PathBuf) -> anyhow::Result<Self> {
        let pid = std::process::id();
        // Write the pid first and link it into place: the lock file is never
        // seen empty.
        let mine = path.with_extension(format!("{pid}"));
        fs::write(&mine, format!("{pid}\n"))?;
        let mut waiting = false;
        let result = loop {
            match fs::hard_link(&mine, &path) {
                Ok(()) => break Ok(Self { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => break Err(e).with_context(|| format!("cannot create lock {path:?}")),
            }
            let owner = fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok());
            match owner {
                Some(owner) if Path::new(&format!("/proc/{owner}")).exists() => {
                    if !waiting {
                        eprintln!(
                            "husk: waiting for process {owner}, which holds {} (a kernel build)",
                            path.display()
                        );
                        waiting = true;
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                _ => {
                    eprintln!("husk: taking over stale lock {}", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        };
        let _ = fs::remove_file(&mine);
        result
    }
}

impl Drop for TreeLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One option as a config file sets it: `Some(value)` for `CONFIG_X=value`
/// (value as written, quotes included), `None` for `# CONFIG_X is not set`.
type Setting = Option<String>;

/// Parses a config fragment into option → setting.
/// Comments and blank lines are skipped; anything else that is not a
/// setting, and an option set twice, is an error.
fn parse_fragment(text: &str) -> anyhow::Result<BTreeMap<String, Setting>> {
    let mut options = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        let (name, setting) = match parse_line(line) {
            Some(parsed) => parsed,
            None if line.is_empty() || line.starts_with('#') => continue,
            None => bail!("line {number}: not `CONFIG_X=value` or `# CONFIG_X is not set`: {line}"),
        };
        if options.insert(name.to_string(), setting).is_some() {
            bail!("line {number}: {name} is set more than once");
        }
    }
    Ok(options)
}

/// Parses a final .config (kconfig's own output) into option → setting.
fn parse_config(text: &str) -> BTreeMap<String, Setting> {
    text.lines()
        .filter_map(|line| parse_line(line.trim()))
        .map(|(name, setting)| (name.to_string(), setting))
        .collect()
}

/// `CONFIG_X=value` or `# CONFIG_X is not set`; anything else is `None`.
fn parse_line(line: &str) -> Option<(&str, Setting)> {
    let valid = |name: &str| {
        name.len() > "CONFIG_".len()
            && name.starts_with("CONFIG_")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if let Some(rest) = line.strip_prefix('#') {
        let name = rest.trim().strip_suffix(" is not set")?.trim();
        return valid(name).then_some((name, None));
    }
    let (name, value) = line.split_once('=')?;
    let name = name.trim();
    (valid(name) && !value.is_empty()).then(|| (name, Some(value.trim().to_string())))
}

/// An option the fragment sets that ended up otherwise in the final .config.
#[derive(Debug, PartialEq, Eq)]
struct Dropped {
    option: String,
    wanted: Setting,
    /// `None` when the final .config does not mention the option at all
    /// (its dependencies hide it).
    got: Option<Setting>,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |setting: &Setting| match setting {
            Some(value) => format!("={value}"),
            None => "not set".to_string(),
        };
        let got = match &self.got {
            Some(setting) => show(setting),
            None => "absent (dependencies not met)".to_string(),
        };
        write!(
            f,
            "{}: wanted {}, got {got}",
            self.option,
            show(&self.wanted)
        )
    }
}

/// Every option of `wanted` whose final setting differs. An option wanted
/// unset may be absent from the final config; one wanted set may not.
fn dropped_options(
    wanted: &BTreeMap<String, Setting>,
    got: &BTreeMap<String, Setting>,
) -> Vec<Dropped> {
    wanted
        .iter()
        .filter_map(|(option, want)| {
            let have = got.get(option);
            let ok = match (want, have) {
                (None, None | Some(None)) => true,
                (Some(w), Some(Some(h))) => w == h,
                _ => false,
            };
            (!ok).then(|| Dropped {
                option: option.clone(),
                wanted: want.clone(),
                got: have.cloned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: &str) -> Setting {
        Some(value.to_string())
    }

    #[test]
    fn fragment_lines_become_settings() {
        let text = "# A comment\n\
                    CONFIG_SMP=y\n\
                    \n\
                    # CONFIG_MODULES is not set\n\
                    CONFIG_LOCALVERSION=\"-husk\"\n\
                    CONFIG_SERIAL_8250_NR_UARTS=1\n\
                    # CONFIG_NOT_A_SETTING needs a word\n\
                    # --- section ---\n";
        let parsed = parse_fragment(text).unwrap();
        let expected: BTreeMap<String, Setting> = [
            ("CONFIG_SMP", set("y")),
            ("CONFIG_MODULES", None),
            ("CONFIG_LOCALVERSION", set("\"-husk\"")),
            ("CONFIG_SERIAL_8250_NR_UARTS", set("1")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn malformed_or_repeated_fragment_lines_are_errors() {
        for bad in [
            "CONFIG_SMP",
            "SMP=y",
            "CONFIG_=y",
            "CONFIG_SMP=",
            "CONFIG_S MP=y",
        ] {
            assert!(parse_fragment(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_fragment("CONFIG_SMP=y\n# CONFIG_SMP is not set\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn dropped_options_are_named() {
        let wanted = parse_fragment(
            "CONFIG_KEPT=y\n\
             CONFIG_OFF=y\n\
             CONFIG_HIDDEN=y\n\
             CONFIG_COUNT=1\n\
             CONFIG_NAME=\"-husk\"\n\
             # CONFIG_UNSET_KEPT is not set\n\
             # CONFIG_UNSET_ABSENT is not set\n\
             # CONFIG_UNSET_SELECTED is not set\n",
        )
        .unwrap();
        let final_config = parse_config(
            "#\n# Automatically generated file; DO NOT EDIT.\n#\n\
             CONFIG_KEPT=y\n\
             # CONFIG_OFF is not set\n\
             CONFIG_COUNT=4\n\
             CONFIG_NAME=\"-husk\"\n\
             # CONFIG_UNSET_KEPT is not set\n\
             CONFIG_UNSET_SELECTED=y\n",
        );
        let dropped = dropped_options(&wanted, &final_config);
        let names: Vec<&str> = dropped.iter().map(|d| d.option.as_str()).collect();
        assert_eq!(
            names,
            [
                "CONFIG_COUNT",
                "CONFIG_HIDDEN",
                "CONFIG_OFF",
                "CONFIG_UNSET_SELECTED"
            ]
        );
        let shown: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "CONFIG_COUNT: wanted =1, got =4",
                "CONFIG_HIDDEN: wanted =y, got absent (dependencies not met)",
                "CONFIG_OFF: wanted =y, got not set",
                "CONFIG_UNSET_SELECTED: wanted not set, got =y",
            ]
        );
        assert!(dropped_options(&wanted, &wanted).is_empty());
    }

    /// The options the guest cannot boot or run pods without; removing one
    /// from the fragment by accident fails here, before any kernel build.
    #[test]
    fn fragment_keeps_what_the_guest_needs() {
        let text = fs::read_to_string(fragment_path()).unwrap();
        let fragment = parse_fragment(&text).unwrap();
        let required = [
            "64BIT",
            "SMP",
            "PVH",
            "KVM_GUEST",
            "VIRTIO_MMIO",
            "VIRTIO_MMIO_CMDLINE_DEVICES",
            "VSOCKETS",
            "VIRTIO_VSOCKETS",
            "VIRTIO_FS",
            "FUSE_FS",
            "VIRTIO_NET",
            "VIRTIO_BLK",
            "OVERLAY_FS",
            "TMPFS",
            "DEVTMPFS",
            "EXT4_FS",
            "BLK_DEV_INITRD",
            "SERIAL_8250_CONSOLE",
            "CGROUPS",
            "MEMCG",
            "CGROUP_PIDS",
            "CFS_BANDWIDTH",
            "CPUSETS",
            "BLK_CGROUP",
            "PID_NS",
            "NET_NS",
            "USER_NS",
            "SECCOMP_FILTER",
        ];
        for name in required {
            let option = format!("CONFIG_{name}");
            assert_eq!(fragment.get(&option), Some(&set("y")), "{option}");
        }
        assert_eq!(fragment.get("CONFIG_MODULES"), Some(&None));
        assert_eq!(fragment.get("CONFIG_RTC_DRV_CMOS"), None);
    }
}
