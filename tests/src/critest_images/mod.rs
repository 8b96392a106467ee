//! Every container image critest (cri-tools v1.36.0) pulls, built from
//! Debian packages and pushed into a docker-registry filesystem storage
//! that a local registry serves as the upstream registries' mirror.
//!
//! The storage is a cache entry keyed by the recipe and the version of
//! every Debian package that can go in, so a warm machine reuses it.
//! One image cannot be made: `test-image-digest` is pinned by a digest of
//! upstream's own bytes, so the "public image with digest" spec cannot pass
//! against these.

mod debs;
mod files;
mod programs;
mod recipes;
mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};

use crate::registry::{image_config, Pusher, TestRegistry};
use crate::{cache, debian};
use recipes::Recipe;

/// Bump when what goes into the images (or how) changes, so existing
/// entries are rebuilt.
const RECIPE_VERSION: &str = "3";

/// The cache kind entries live under.
const CACHE_KIND: &str = "critest-images";

/// The storage root inside an entry.
const STORAGE: &str = "storage";

/// An entry's list of upstream names, one a line; written last, so an
/// entry holding it is complete.
const IMAGES_FILE: &str = "images.txt";

/// Host packages the build runs (registry, compiler, readelf).
const TOOLS: &[&str] = &["docker-registry", "binutils"];

/// A docker-registry filesystem storage holding every image critest pulls,
/// each under its upstream repository path with the registry host dropped
/// (`registry.k8s.io/e2e-test-images/busybox:1.29-2` -> `e2e-test-images/busybox:1.29-2`,
/// `k8s.gcr.io/pause:3.9` and `registry.k8s.io/pause:3.9` -> `pause:3.9`,
/// `gcr.io/k8s-staging-cri-tools/test-image-1:latest` -> `k8s-staging-cri-tools/test-image-1:latest`).
#[derive(Debug, Clone)]
pub struct CritestImages {
    /// The storage root a docker-registry `filesystem.rootdirectory` can serve as is.
    pub storage: PathBuf,
    /// Upstream names with tags, e.g. "registry.k8s.io/e2e-test-images/busybox:1.29-2".
    pub images: Vec<String>,
}

/// Upstream registry hosts the images live under (for mirror config).
pub const UPSTREAM_HOSTS: &[&str] = &["registry.k8s.io", "k8s.gcr.io", "gcr.io"];

/// `name` (an upstream name) as the storage holds it: its repository path
/// and tag, without the registry host.
pub fn local_name(name: &str) -> anyhow::Result<&str> {
    let (host, rest) = name
        .split_once('/')
        .with_context(|| format!("{name} names no registry host"))?;
    if !UPSTREAM_HOSTS.contains(&host) {
        bail!("{name} is not under one of {UPSTREAM_HOSTS:?}");
    }
    Ok(rest)
}

/// Builds (or reuses from the cache `cache::entry("critest-images", key)`) the storage.
///
/// Needs root and apt (it installs docker-registry, gcc and binutils if
/// missing, and fetches .debs). Blocking: it runs its own async runtime on
/// a thread of its own, so it may be called from async code as well.
pub fn build() -> anyhow::Result<CritestImages> {
    // One build at a time per process: parallel test threads would build
    // into the same scratch folder.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    debian::ensure_installed(TOOLS)?;
    let toolchain = programs::toolchain_id()?;
    let versions = package_versions()?;
    let key = cache_key(&toolchain, &versions);
    let entry = cache::entry(CACHE_KIND, &key);
    if let Some(images) = complete(&entry) {
        return Ok(images);
    }
    let started = std::time::Instant::now();
    eprintln!("husk: building critest images into {}", entry.display());
    let tmp = scratch_sibling(&entry)?;
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    if let Err(e) = fill(&tmp, versions) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "cannot build the critest images in {}",
            tmp.display()
        )));
    }
    if let Err(e) = fs::rename(&tmp, &entry) {
        let _ = fs::remove_dir_all(&tmp);
        // Another process built the same entry meanwhile.
        return complete(&entry).with_context(|| {
            format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                entry.display()
            )
        });
    }
    eprintln!("husk: critest images built in {:.0?}", started.elapsed());
    complete(&entry).context("a fresh critest image entry reads as incomplete")
}

/// The candidate version of every package an image may take files from.
fn package_versions() -> anyhow::Result<BTreeMap<String, String>> {
    debian::candidate_versions(&debs::packages(recipes::PROGRAM_PACKAGES))
}

fn cache_key(toolchain: &str, versions: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<(&str, &[u8])> = vec![
        ("recipe", RECIPE_VERSION.as_bytes()),
        ("toolchain", toolchain.as_bytes()),
    ];
    parts.extend(versions.iter().map(|(p, v)| (p.as_str(), v.as_bytes())));
    cache::key(&parts)
}

/// The entry's images if it is complete.
fn complete(entry: &Path) -> Option<CritestImages> {
    let text = fs::read_to_string(entry.join(IMAGES_FILE)).ok()?;
    let storage = entry.join(STORAGE);
    storage.is_dir().then(|| CritestImages {
        storage,
        images: text.lines().map(str::to_string).collect(),
    })
}

/// `<parent>/.<key>.tmp<pid>`: on the entry's filesystem, so the final
/// rename is atomic.
fn scratch_sibling(entry: &Path) -> anyhow::Result<PathBuf> {
    let name = entry.file_name().context("a cache entry has a name")?;
    let parent = entry.parent().context("a cache entry has a parent")?;
    fs::create_dir_all(parent)?;
    Ok(parent.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Builds the images and pushes them into `<tmp>/storage`, then writes the
/// list; scratch files (the .debs, the registry's config and log) go in a
/// folder removed at the end.
fn fill(tmp: &Path, versions: BTreeMap<String, String>) -> anyhow::Result<()> {
    let work = tmp.join("work");
    let mut debs = debs::Debs::new(&work, versions);
    let recipes = recipes::all(&mut debs, &work.join("programs"))?;
    let storage = tmp.join(STORAGE);
    {
        let registry = TestRegistry::start_at(&storage, &work.join("registry"))?;
        push_all(registry.addr(), &recipes)?;
    }
    let names: Vec<String> = recipes.iter().flat_map(Recipe::names).collect();
    fs::write(tmp.join(IMAGES_FILE), names.join("\n") + "\n")?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// Pushes every recipe to the registry at `addr`, on a thread with its own
/// runtime (the caller may be inside one).
fn push_all(addr: &str, recipes: &[Recipe]) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let pusher = Pusher::new(addr, "critest").await;
                for recipe in recipes {
                    push_one(&pusher, recipe).await?;
                }
                Ok(())
            })
        })
        .join()
        .unwrap_or_else(|_| bail!("the push thread panicked"))
    })
}

async fn push_one(pusher: &Pusher, recipe: &Recipe) -> anyhow::Result<()> {
    let layers: Vec<&crate::registry::Layer> = recipe.layers.iter().map(|l| &**l).collect();
    let config = image_config("amd64", recipe.run.clone(), &layers);
    let tags: Vec<&str> = recipe.tags.to_vec();
    pusher
        .to_repository(recipe.repository)
        .push_image(&tags, &config, &layers)
        .await
        .with_context(|| format!("cannot push {}", recipe.repository))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_lose_only_their_host() {
        assert_eq!(
            local_name("registry.k8s.io/e2e-test-images/busybox:1.29-2").unwrap(),
            "e2e-test-images/busybox:1.29-2"
        );
        assert_eq!(local_name("k8s.gcr.io/pause:3.9").unwrap(), "pause:3.9");
        assert_eq!(
            local_name("gcr.io/k8s-staging-cri-tools/test-image-1:latest").unwrap(),
            "k8s-staging-cri-tools/test-image-1:latest"
        );
        assert!(local_name("docker.io/library/busybox:latest").is_err());
        assert!(local_name("busybox").is_err());
    }

    #[test]
    fn the_key_follows_the_recipe_toolchain_and_every_version() {
        let versions: BTreeMap<String, String> = [("busybox", "1"), ("libc6", "2")]
            .map(|(p, v)| (p.into(), v.into()))
            .into();
        let key = cache_key("cc 12", &versions);
        assert_eq!(key, cache_key("cc 12", &versions));
        assert_ne!(key, cache_key("cc 13", &versions));
        let mut newer = versions.clone();
        newer.insert("libc6".into(), "3".into());
        assert_ne!(key, cache_key("cc 12", &newer));
    }

    #[test]
    fn an_entry_without_its_list_is_incomplete() {
        let dir = std::env::temp_dir().join(format!("husk-critest-entry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(STORAGE)).unwrap();
        assert!(complete(&dir).is_none());
        fs::write(dir.join(IMAGES_FILE), "registry.k8s.io/pause:3.9\n").unwrap();
        let images = complete(&dir).unwrap();
        assert_eq!(images.images, ["registry.k8s.io/pause:3.9"]);
        assert_eq!(images.storage, dir.join(STORAGE));
        fs::remove_dir_all(&dir).unwrap();
    }
}
