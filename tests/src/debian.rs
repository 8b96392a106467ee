//! Debian packages: install what is missing, ask versions, fetch .debs.
//!
//! Every command that needs a package calls [`ensure_installed`] first, so a
//! fresh Debian 12 machine needs no manual setup beyond Rust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context};

/// The installed version of `package`, if it is installed.
pub fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}|${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (status, version) = text.split_once('|')?;
    (status.ends_with(" installed") && !version.is_empty()).then(|| version.to_string())
}

static APT_UPDATE: Once = Once::new();

fn apt_update() {
    APT_UPDATE.call_once(|| {
        eprintln!("husk: apt-get update");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    });
}

/// Installs every package in `packages` that is not installed yet.
pub fn ensure_installed(packages: &[&str]) -> anyhow::Result<()> {
    // Tests of one binary run on parallel threads, and two apt-gets fight
    // over dpkg's lock: one install at a time per process.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| installed_version(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_update();
    eprintln!("husk: installing Debian packages: {}", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get (husk's setup needs root on Debian 12)")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", missing.join(" "));
    }
    Ok(())
}

/// The candidate version apt would install for `package`.
pub fn candidate_version(package: &str) -> anyhow::Result<String> {
    let lookup = || -> anyhow::Result<Option<String>> {
        Ok(policy_candidates(&[package.to_string()])?.remove(package))
    };
    if let Some(v) = lookup()? {
        return Ok(v);
    }
    apt_update();
    lookup()?.with_context(|| format!("apt knows no candidate for {package}"))
}

/// The candidate version of each of `packages`: one `apt-cache policy` for
/// all (a call takes about half a second, which a build keyed by two dozen
/// packages would otherwise pay each time), then [`candidate_version`] for
/// any it left out (which refreshes apt's lists first).
pub fn candidate_versions(packages: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut found = policy_candidates(packages)?;
    for package in packages {
        if !found.contains_key(package) {
            found.insert(package.clone(), candidate_version(package)?);
        }
    }
    Ok(found)
}

/// `apt-cache policy` for `packages`: those with a candidate, and it.
fn policy_candidates(packages: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let out = Command::new("apt-cache")
        .arg("policy")
        .args(packages)
        .output()
        .context("cannot run apt-cache")?;
    let mut found = parse_policy(&String::from_utf8_lossy(&out.stdout));
    found.retain(|p, _| packages.contains(p));
    Ok(found)
}

/// `package -> candidate` from `apt-cache policy` output.
fn parse_policy(text: &str) -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    let mut package = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            package = line.strip_suffix(':').map(str::to_string);
        } else if let (Some(p), Some(v)) = (&package, line.trim().strip_prefix("Candidate: ")) {
            if v != "(none)" {
                versions.insert(p.clone(), v.to_string());
            }
        }
    }
    versions
}

/// The first dependency of `package` that names a versioned package whose
/// name starts with `prefix` (e.g. linux-image-cloud-amd64 →
/// linux-image-6.1.0-NN-cloud-amd64).
pub fn versioned_dependency(package: &str, prefix: &str) -> anyhow::Result<String> {
    apt_update_if_unknown(package)?;
    let out = Command::new("apt-cache")
        .args(["depends", package])
        .output()
        .context("cannot run apt-cache depends")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().to_string())
        .find(|d| d.starts_with(prefix))
        .with_context(|| format!("{package} has no dependency starting with {prefix}"))
}

fn apt_update_if_unknown(package: &str) -> anyhow::Result<()> {
    candidate_version(package).map(|_| ())
}

/// Downloads `package`'s .deb into `dir` (without installing it) and
/// returns its path.
pub fn download(package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    apt_update_if_unknown(package)?;
    let status = Command::new("apt-get")
        // The cache folder is root's; apt's `_apt` sandbox user can't write it.
        .args(["download", "-qq", "-o", "APT::Sandbox::User=root", package])
        .current_dir(dir)
        .status()
        .context("cannot run apt-get download")?;
    if !status.success() {
        bail!("apt-get download {package} failed: {status}");
    }
    let deb = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb in {dir:?}"))?;
    Ok(deb)
}

/// Unpacks a .deb's files into `dest` (dpkg -x).
pub fn unpack(deb: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .status()
        .context("cannot run dpkg -x")?;
    if !status.success() {
        bail!("dpkg -x {deb:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_policy_output_parses_per_package() {
        let text = "busybox:
  Installed: (none)
  Candidate: 1:1.35.0-4+deb12u1+b1
  Version table:
     1:1.35.0-4+deb12u1+b1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
libgone:
  Installed: (none)
  Candidate: (none)
libc6:
  Installed: 2.36-9+deb12u14
  Candidate: 2.36-9+deb12u14
";
        let versions = parse_policy(text);
        assert_eq!(versions.len(), 2);
        assert_eq!(versions["busybox"], "1:1.35.0-4+deb12u1+b1");
        assert_eq!(versions["libc6"], "2.36-9+deb12u14");
    }
}
