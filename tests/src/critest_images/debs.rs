//! Debian packages as sources of image files: fetched with `apt-get
//! download` and unpacked with `dpkg -x` (never installed), and the
//! shared libraries a layer's programs need, found by reading each ELF
//! file's interpreter and `DT_NEEDED` entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

use super::tree::Tree;
use crate::debian;

/// The package each shared library the images' programs load comes from.
/// A library missing here fails the build with its name; add it with the
/// package `dpkg -S <soname>` names on a Debian 12 machine. Every package
/// here is part of the cache key, so the table may list more than a build
/// ends up using.
const SONAME_PACKAGES: &[(&str, &str)] = &[
    ("ld-linux-x86-64.so.2", "libc6"),
    ("libc.so.6", "libc6"),
    ("libm.so.6", "libc6"),
    ("libresolv.so.2", "libc6"),
    ("libpthread.so.0", "libc6"),
    ("libdl.so.2", "libc6"),
    ("librt.so.1", "libc6"),
    ("libcrypt.so.1", "libcrypt1"),
    ("libpcre2-8.so.0", "libpcre2-8-0"),
    ("libssl.so.3", "libssl3"),
    ("libcrypto.so.3", "libssl3"),
    ("libz.so.1", "zlib1g"),
    ("libapr-1.so.0", "libapr1"),
    ("libaprutil-1.so.0", "libaprutil1"),
    ("libuuid.so.1", "libuuid1"),
    ("libexpat.so.1", "libexpat1"),
    ("libproc2.so.0", "libproc2-0"),
    ("libsystemd.so.0", "libsystemd0"),
    ("libcap.so.2", "libcap2"),
    ("libgcrypt.so.20", "libgcrypt20"),
    ("libgpg-error.so.0", "libgpg-error0"),
    ("liblzma.so.5", "liblzma5"),
    ("libzstd.so.1", "libzstd1"),
    ("liblz4.so.1", "liblz4-1"),
    ("libgcc_s.so.1", "libgcc-s1"),
];

/// Libraries a library loads with `dlopen`, which `DT_NEEDED` does not
/// show: glibc needs libgcc_s to unwind a thread in `pthread_exit` or
/// cancellation, and aborts without it (Apache's workers did).
const DLOPENED: &[(&str, &str)] = &[("libc.so.6", "libgcc_s.so.1")];

/// Where the dynamic loader looks without an `/etc/ld.so.cache` (Debian's
/// multiarch folders), and so where a layer's libraries are looked up.
const LIB_DIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];

/// Every package an image may take files from: `programs` (the packages
/// recipes copy programs out of) and the library table's.
pub(super) fn packages(programs: &[&str]) -> Vec<String> {
    let mut all: BTreeSet<&str> = programs.iter().copied().collect();
    all.extend(SONAME_PACKAGES.iter().map(|(_, p)| *p));
    all.into_iter().map(str::to_string).collect()
}

fn package_of(soname: &str) -> anyhow::Result<&'static str> {
    SONAME_PACKAGES
        .iter()
        .find(|(s, _)| *s == soname)
        .map(|(_, p)| *p)
        .with_context(|| {
            format!(
                "no package is known for {soname}: add it to SONAME_PACKAGES in {}",
                file!()
            )
        })
}

/// Downloads and unpacks packages on demand, each once, checking each is
/// the version the cache key was computed from.
pub(super) struct Debs {
    dir: PathBuf,
    versions: BTreeMap<String, String>,
    unpacked: HashMap<String, PathBuf>,
    elves: HashMap<PathBuf, Option<Elf>>,
}

impl Debs {
    /// Works in `dir`; `versions` are the versions the build is keyed by.
    pub(super) fn new(dir: &Path, versions: BTreeMap<String, String>) -> Debs {
        Debs {
            dir: dir.to_path_buf(),
            versions,
            unpacked: HashMap::new(),
            elves: HashMap::new(),
        }
    }

    /// The folder `package`'s files are unpacked in.
    pub(super) fn root(&mut self, package: &str) -> anyhow::Result<PathBuf> {
        if let Some(root) = self.unpacked.get(package) {
            return Ok(root.clone());
        }
        let keyed = self
            .versions
            .get(package)
            .with_context(|| format!("{package} is not among the keyed packages"))?;
        let deb = debian::download(package, &self.dir.join("debs").join(package))?;
        let version = deb_version(&deb)?;
        ensure!(
            &version == keyed,
            "apt fetched {package} {version}, but the build is keyed by {keyed} (apt's lists changed \
             mid-build?): run it again"
        );
        let root = self.dir.join("root").join(package);
        debian::unpack(&deb, &root)?;
        self.unpacked.insert(package.to_string(), root.clone());
        Ok(root)
    }

    /// What the file at `path` needs from the loader, if it is a dynamic ELF
    /// file (remembered: a layer's closure reads each file once).
    fn elf(&mut self, path: &Path) -> anyhow::Result<Option<Elf>> {
        if let Some(elf) = self.elves.get(path) {
            return Ok(elf.clone());
        }
        let elf = read_elf(path)?;
        self.elves.insert(path.to_path_buf(), elf.clone());
        Ok(elf)
    }
}

/// A .deb's version, from its control file.
fn deb_version(deb: &Path) -> anyhow::Result<String> {
    let out = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(deb)
        .arg("Version")
        .output()
        .context("cannot run dpkg-deb")?;
    ensure!(
        out.status.success(),
        "dpkg-deb --field {} failed",
        deb.display()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// What a dynamically linked ELF file asks of the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Elf {
    /// The program interpreter (`PT_INTERP`), for executables.
    pub(super) interpreter: Option<String>,
    /// `DT_NEEDED` sonames.
    pub(super) needed: Vec<String>,
}

/// `path`'s interpreter and needed libraries; `None` for a file that is
/// no ELF or links nothing (a static binary).
fn read_elf(path: &Path) -> anyhow::Result<Option<Elf>> {
    let mut magic = [0u8; 4];
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Ok(None);
    }
    let out = Command::new("readelf")
        .args(["--wide", "--program-headers", "--dynamic"])
        .arg(path)
        .output()
        .context("cannot run readelf (Debian's binutils)")?;
    ensure!(
        out.status.success(),
        "readelf {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let elf = parse_readelf(&String::from_utf8_lossy(&out.stdout));
    Ok((elf.interpreter.is_some() || !elf.needed.is_empty()).then_some(elf))
}

/// The interpreter and `NEEDED` lines of `readelf -W -l -d` output.
fn parse_readelf(text: &str) -> Elf {
    let bracketed = |line: &str, marker: &str| -> Option<String> {
        let rest = &line[line.find(marker)? + marker.len()..];
        Some(rest[..rest.find(']')?].trim().to_string())
    };
    let interpreter = text
        .lines()
        .find_map(|l| bracketed(l, "[Requesting program interpreter:"));
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| bracketed(l, "Shared library: ["))
        .collect();
    Elf {
        interpreter,
        needed,
    }
}

/// Whether a layer (`tree` over `lower`) has the loader at `interpreter`
/// or the library `soname` in a loader folder.
fn provided(trees: &[&Tree], wanted: &Wanted) -> bool {
    match wanted {
        Wanted::Interpreter(path) => trees.iter().any(|t| t.contains(path)),
        Wanted::Library(soname) => LIB_DIRS
            .iter()
            .any(|dir| trees.iter().any(|t| t.contains(&format!("{dir}/{soname}")))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Wanted {
    Interpreter(String),
    Library(String),
}

/// Adds to `tree` the loader and every shared library its ELF files need,
/// transitively, that neither it nor the layers below (`lower`) have, each
/// copied from its package in [`SONAME_PACKAGES`].
pub(super) fn add_libraries(
    tree: &mut Tree,
    lower: &[&Tree],
    debs: &mut Debs,
) -> anyhow::Result<()> {
    loop {
        let mut wanted = BTreeSet::new();
        let files: Vec<PathBuf> = tree.host_files().map(|(_, p)| p.to_path_buf()).collect();
        for file in files {
            let Some(elf) = debs.elf(&file)? else {
                continue;
            };
            wanted.extend(elf.interpreter.map(Wanted::Interpreter));
            wanted.extend(elf.needed.into_iter().map(Wanted::Library));
        }
        for (library, loads) in DLOPENED {
            if wanted.contains(&Wanted::Library(library.to_string())) {
                wanted.insert(Wanted::Library(loads.to_string()));
            }
        }
        let mut trees: Vec<&Tree> = lower.to_vec();
        trees.push(tree);
        wanted.retain(|w| !provided(&trees, w));
        if wanted.is_empty() {
            return Ok(());
        }
        for want in wanted {
            add_one(tree, debs, &want)?;
        }
    }
}

fn add_one(tree: &mut Tree, debs: &mut Debs, want: &Wanted) -> anyhow::Result<()> {
    let (soname, candidates) = match want {
        Wanted::Interpreter(path) => {
            let name = path.rsplit('/').next().unwrap_or(path);
            (name, vec![path.trim_start_matches('/').to_string()])
        }
        Wanted::Library(soname) => (
            soname.as_str(),
            LIB_DIRS.iter().map(|d| format!("{d}/{soname}")).collect(),
        ),
    };
    let package = package_of(soname)?;
    let root = debs.root(package)?;
    let Some(path) = candidates
        .iter()
        .find(|c| fs::symlink_metadata(root.join(c)).is_ok())
    else {
        bail!("{package} has none of {candidates:?}");
    };
    tree.copy_from(&root, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readelf_output_parses() {
        let text = "
Program Headers:
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  INTERP         0x000318 0x0000000000000318 0x0000000000000318 0x00001c 0x00001c R   0x1
      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]
Dynamic section at offset 0x1f5da0 contains 27 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libresolv.so.2]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000000e (SONAME)             Library soname: [libfoo.so.1]
";
        assert_eq!(
            parse_readelf(text),
            Elf {
                interpreter: Some("/lib64/ld-linux-x86-64.so.2".into()),
                needed: vec!["libresolv.so.2".into(), "libc.so.6".into()],
            }
        );
        assert_eq!(
            parse_readelf("There is no dynamic section in this file."),
            Elf {
                interpreter: None,
                needed: vec![],
            }
        );
    }

    #[test]
    fn every_loader_library_has_a_package_and_unknown_ones_say_where_to_add_them() {
        assert_eq!(package_of("libc.so.6").unwrap(), "libc6");
        let err = package_of("libnope.so.9").unwrap_err().to_string();
        assert!(
            err.contains("libnope.so.9") && err.contains("SONAME_PACKAGES"),
            "{err}"
        );
        let all = packages(&["busybox"]);
        assert!(all.contains(&"busybox".to_string()) && all.contains(&"libssl3".to_string()));
        assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
    }

    #[test]
    fn a_library_a_lower_layer_has_is_not_wanted_again() {
        let mut lower = Tree::default();
        lower.text("lib/x86_64-linux-gnu/libc.so.6", "").unwrap();
        lower.text("lib64/ld-linux-x86-64.so.2", "").unwrap();
        let upper = Tree::default();
        let trees = [&lower, &upper];
        assert!(provided(&trees, &Wanted::Library("libc.so.6".into())));
        assert!(!provided(&trees, &Wanted::Library("libz.so.1".into())));
        let loader = Wanted::Interpreter("/lib64/ld-linux-x86-64.so.2".into());
        assert!(provided(&trees, &loader));
    }
}
