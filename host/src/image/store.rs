//! The node's image store: pulls images, keeps blobs content-addressed
//! and layers unpacked once, shared by every pod.
//!
//! Layout under the root:
//! - `images.json`: the index ([`super::index`]).
//! - `blobs/sha256/<hex>`: configs and compressed layers, verified.
//! - `layers/<diff-id hex>/`: unpacked layers, read-only by convention.
//! - `tmp/`: downloads and unpacks in progress, renamed into place when
//!   complete and durable; emptied on open.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::digest::Digest;
use super::error::ImageError;
use super::fsutil;
use super::index::{self, Record};
use super::locks::KeyedLocks;
use super::manifest::{self, ConfigBlob, Descriptor, ImageManifest, Manifest};
use super::reference::{ImageName, Lookup};
use super::registry::Registry;
use super::types::{FsUsage, Image, RegistryAuth, RegistryOptions};
use super::unpack::{self, DEFAULT_MAX_LAYER_BYTES};

/// Largest image config we read into memory.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

pub struct ImageStore {
    root: PathBuf,
    options: RegistryOptions,
    state: Mutex<State>,
    locks: KeyedLocks,
}

/// Everything the std mutex guards; never held across an await.
#[derive(Default)]
struct State {
    records: Vec<Record>,
    /// Blobs (`blob:<hex>`) and layers (`layer:<hex>`) in-flight pulls
    /// use but have not committed yet: garbage collection keeps them.
    pinned: HashMap<String, usize>,
}

/// Releases pins when a pull ends, whatever the outcome.
struct Pins<'s> {
    store: &'s ImageStore,
    keys: Vec<String>,
}

impl Pins<'_> {
    fn add(&mut self, key: String) {
        *self.store.state().pinned.entry(key.clone()).or_default() += 1;
        self.keys.push(key);
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut state = self.store.state();
        for key in self.keys.drain(..) {
            if let Some(n) = state.pinned.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    state.pinned.remove(&key);
                }
            }
        }
    }
}

fn blob_key(hex: &str) -> String {
    format!("blob:{hex}")
}

fn layer_key(hex: &str) -> String {
    format!("layer:{hex}")
}

impl ImageStore {
    /// Opens (creating) the store at `root`: loads the index, drops
    /// leftovers of interrupted pulls and images whose files are gone, and
    /// collects unreferenced blobs and layers.
    pub fn open(root: &Path, registry: RegistryOptions) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            root: root.to_path_buf(),
            options: registry,
            state: Mutex::new(State::default()),
            locks: KeyedLocks::default(),
        };
        for dir in [store.blobs_dir(), store.layers_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
        }
        fsutil::empty_dir(&store.tmp_dir()).map_err(|e| {
            ImageError::io(format!("cannot clean {}", store.tmp_dir().display()), e)
        })?;
        let mut records = index::load(&store.index_path())?;
        let before = records.len();
        records.retain(|r| {
            let complete = store.blob_path(r.config_hex()).exists()
                && r.image.layers.iter().all(|l| store.layer_dir(l).is_dir());
            if !complete {
                tracing::warn!(image = %r.image.id, "dropping an image whose files are missing");
            }
            complete
        });
        if records.len() != before {
            index::save(&store.index_path(), &records)?;
        }
        let garbage = {
            let mut state = store.state();
            state.records = records;
            store.collect_garbage(&state)?
        };
        store.delete(garbage);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unpacked, read-only folder of one layer (a key of
    /// [`Image::layers`]).
    pub fn layer_dir(&self, layer_key: &str) -> PathBuf {
        self.layers_dir().join(layer_key)
    }

    pub fn list(&self) -> Vec<Image> {
        self.state()
            .records
            .iter()
            .map(|r| r.image.clone())
            .collect()
    }

    /// Finds an image by id (`sha256:<hex>` or bare hex), tag reference
    /// (normalized: `busybox` is `docker.io/library/busybox:latest`) or
    /// digest reference. Errs only for a malformed reference.
    pub fn get(&self, reference_or_id: &str) -> Result<Option<Image>, ImageError> {
        let lookup = Lookup::parse(reference_or_id)?;
        let state = self.state();
        Ok(state
            .records
            .iter()
            .find(|r| matches(&r.image, &lookup))
            .map(|r| r.image.clone()))
    }

    /// Removes an image by id (with all its names), or one name of it;
    /// the image goes when no name refers to it anymore. Removing what is
    /// not there is fine (CRI RemoveImage is idempotent). Blobs and layers
    /// no image uses anymore are deleted.
    pub fn remove(&self, reference_or_id: &str) -> Result<(), ImageError> {
        let lookup = Lookup::parse(reference_or_id)?;
        let garbage = {
            let mut state = self.state();
            let mut records = state.records.clone();
            match &lookup {
                Lookup::Id(id) => records.retain(|r| r.image.id != *id),
                Lookup::Tag(tag) => {
                    for r in &mut records {
                        untag(&mut r.image, tag);
                    }
                }
                Lookup::RepoDigest(d) => {
                    for r in &mut records {
                        r.image.repo_digests.retain(|x| x != d);
                    }
                }
            }
            records.retain(|r| !r.is_unreferenced());
            if records == state.records {
                return Ok(());
            }
            index::save(&self.index_path(), &records)?;
            state.records = records;
            self.collect_garbage(&state)?
        };
        self.delete(garbage);
        Ok(())
    }

    /// Pulls `reference` (linux/amd64 from an index), verifying every
    /// digest, and records it. Pulling an image already here costs one
    /// manifest request (to see whether the tag moved).
    pub async fn pull(&self, reference: &str, auth: RegistryAuth) -> Result<Image, ImageError> {
        let name = ImageName::parse(reference)?;
        let registry = Registry::new(&self.options, auth, reference)?;
        let result = self.pull_name(&name, &registry).await;
        if result.is_err() {
            // Leave nothing of a failed pull behind (its pins are gone).
            let garbage = {
                let state = self.state();
                self.collect_garbage(&state)
            };
            match garbage {
                Ok(g) => self.delete(g),
                Err(e) => tracing::warn!(error = %e, "cannot clean up after a failed pull"),
            }
        }
        result
    }

    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let (used_bytes, inodes_used) = fsutil::usage(&self.root)
            .map_err(|e| ImageError::io(format!("cannot measure {}", self.root.display()), e))?;
        Ok(FsUsage {
            mountpoint: self.root.clone(),
            used_bytes,
            inodes_used,
        })
    }

    async fn pull_name(&self, name: &ImageName, registry: &Registry) -> Result<Image, ImageError> {
        let shown = name.to_string();
        let (body, top_digest) = registry.manifest(&name.reference).await?;
        let repo_digest = name.repo_digest(&top_digest);
        if let Some(image) = self.retag(name, &repo_digest)? {
            tracing::debug!(reference = %shown, id = %image.id, "image already present");
            return Ok(image);
        }
        let (manifest, manifest_digest) = match parse_manifest(&shown, &body)? {
            Manifest::Image(m) => (m, top_digest),
            Manifest::Index(entries) => {
                let entry = manifest::choose_amd64(&entries).map_err(|available| {
                    ImageError::NoMatchingPlatform {
                        reference: shown.clone(),
                        available,
                    }
                })?;
                let digest = parse_digest(&shown, "index entry", &entry.digest)?;
                let child = name.reference.clone_with_digest(digest.to_string());
                let (body, digest) = registry.manifest(&child).await?;
                match parse_manifest(&shown, &body)? {
                    Manifest::Image(m) => (m, digest),
                    Manifest::Index(_) => {
                        return Err(ImageError::BadContent {
                            reference: shown,
                            what: "index",
                            detail: format!("its linux/amd64 entry {digest} is another index"),
                        })
                    }
                }
            }
        };
        let mut pins = Pins {
            store: self,
            keys: Vec::new(),
        };
        let (config_digest, config) = self
            .fetch_config(name, registry, &manifest, &mut pins)
            .await?;
        let layers = layer_plan(&shown, &manifest, &config)?;
        for (blob, diff_id, _) in &layers {
            pins.add(blob_key(blob.hex()));
            pins.add(layer_key(diff_id.hex()));
        }
        futures::future::try_join_all(
            layers.iter().map(|(blob, diff_id, size)| {
                self.ensure_layer(name, registry, blob, diff_id, *size)
            }),
        )
        .await?;
        let image = Image {
            id: config_digest.to_string(),
            repo_tags: name.tag().into_iter().collect(),
            repo_digests: vec![repo_digest],
            size: layers.iter().map(|(_, _, size)| *size).sum(),
            config: config.image_config(),
            layers: layers.iter().map(|(_, d, _)| d.hex().to_string()).collect(),
        };
        let record = Record {
            image,
            manifest_digest: manifest_digest.to_string(),
            layer_blobs: layers.iter().map(|(b, _, _)| b.to_string()).collect(),
        };
        let image = self.commit(name, record)?;
        drop(pins);
        tracing::info!(reference = %shown, id = %image.id, "pulled image");
        Ok(image)
    }

    /// Downloads (unless present) and parses the config blob.
    async fn fetch_config(
        &self,
        name: &ImageName,
        registry: &Registry,
        manifest: &ImageManifest,
        pins: &mut Pins<'_>,
    ) -> Result<(Digest, ConfigBlob), ImageError> {
        let shown = name.to_string();
        let desc = &manifest.config;
        if !manifest::is_config_type(&desc.media_type) {
            return Err(ImageError::UnsupportedMediaType {
                reference: shown,
                what: format!("config {}", desc.digest),
                media_type: desc.media_type.clone(),
            });
        }
        let digest = parse_digest(&shown, "config", &desc.digest)?;
        pins.add(blob_key(digest.hex()));
        let max = declared_size(desc, MAX_CONFIG_BYTES);
        let path = self.ensure_blob(name, registry, &digest, max).await?;
        let data = fs::read(&path)
            .map_err(|e| ImageError::io(format!("cannot read {}", path.display()), e))?;
        let config: ConfigBlob =
            serde_json::from_slice(&data).map_err(|e| ImageError::BadContent {
                reference: shown,
                what: "config",
                detail: format!("{digest}: {e}"),
            })?;
        Ok((digest, config))
    }

    /// Makes blob `digest` present under `blobs/`, downloading it once
    /// even when several pulls want it at the same time.
    async fn ensure_blob(
        &self,
        name: &ImageName,
        registry: &Registry,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<PathBuf, ImageError> {
        let _turn = self.locks.lock(&blob_key(digest.hex())).await;
        let path = self.blob_path(digest.hex());
        if path.exists() {
            return Ok(path);
        }
        let io = |what: &str| {
            let what = format!("{what} blob {digest}");
            move |e| ImageError::io(what, e)
        };
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .map_err(io("cannot create a temp file for"))?;
        registry
            .blob(&name.reference, digest, max_bytes, tmp.as_file_mut())
            .await?;
        tmp.as_file().sync_all().map_err(io("cannot sync"))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .map_err(io("cannot store"))?;
        fsutil::sync_dir(&self.blobs_dir()).map_err(io("cannot sync the folder of"))?;
        Ok(path)
    }

    /// Makes layer `diff_id` present under `layers/`: downloaded and
    /// unpacked once per node, into a temp folder renamed into place.
    async fn ensure_layer(
        &self,
        name: &ImageName,
        registry: &Registry,
        blob: &Digest,
        diff_id: &Digest,
        size: u64,
    ) -> Result<(), ImageError> {
        let _turn = self.locks.lock(&layer_key(diff_id.hex())).await;
        let dir = self.layer_dir(diff_id.hex());
        if dir.is_dir() {
            return Ok(());
        }
        let max = if size > 0 {
            size
        } else {
            DEFAULT_MAX_LAYER_BYTES
        };
        let blob_path = self.ensure_blob(name, registry, blob, max).await?;
        let io = |what: &'static str| {
            let what = format!("{what} layer {diff_id}");
            move |e| ImageError::io(what, e)
        };
        let scratch = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_dir())
            .map_err(io("cannot create a temp folder for"))?;
        let target = scratch.path().join("layer");
        fs::create_dir(&target).map_err(io("cannot create"))?;
        fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io("cannot chmod"))?;
        let job = {
            let (target, diff_id) = (target.clone(), diff_id.clone());
            let (reference, blob) = (name.to_string(), blob.to_string());
            move || -> Result<(), ImageError> {
                let file = fs::File::open(&blob_path).map_err(|e| {
                    ImageError::io(format!("cannot open {}", blob_path.display()), e)
                })?;
                let reader = std::io::BufReader::new(file);
                unpack::unpack_layer(reader, &target, &diff_id, DEFAULT_MAX_LAYER_BYTES).map_err(
                    |source| ImageError::Unpack {
                        reference,
                        digest: blob,
                        source,
                    },
                )?;
                fsutil::syncfs(&target).map_err(|e| ImageError::io("cannot sync a layer", e))
            }
        };
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ImageError::io("unpack task failed", std::io::Error::other(e)))??;
        fs::rename(&target, &dir).map_err(io("cannot store"))?;
        fsutil::sync_dir(&self.layers_dir()).map_err(io("cannot sync the folder of"))?;
        tracing::debug!(layer = %diff_id, elapsed = ?started.elapsed(), "unpacked layer");
        Ok(())
    }

    /// Fast path: the manifest `repo_digest` names is already here; moves
    /// the tag to it if needed.
    fn retag(&self, name: &ImageName, repo_digest: &str) -> Result<Option<Image>, ImageError> {
        let mut state = self.state();
        let Some(pos) = state
            .records
            .iter()
            .position(|r| r.image.repo_digests.iter().any(|d| d == repo_digest))
        else {
            return Ok(None);
        };
        let id = state.records[pos].image.id.clone();
        let records = with_tag(&state.records, name.tag(), &id, None);
        if records != state.records {
            index::save(&self.index_path(), &records)?;
            state.records = records;
        }
        Ok(state
            .records
            .iter()
            .find(|r| r.image.id == id)
            .map(|r| r.image.clone()))
    }

    /// Records a pulled image: merged with the image of the same id if
    /// there is one, taking its tag away from any other image.
    fn commit(&self, name: &ImageName, record: Record) -> Result<Image, ImageError> {
        let id = record.image.id.clone();
        let garbage = {
            let mut state = self.state();
            let records = with_tag(&state.records, name.tag(), &id, Some(record));
            index::save(&self.index_path(), &records)?;
            state.records = records;
            self.collect_garbage(&state)?
        };
        self.delete(garbage);
        let state = self.state();
        let image = state
            .records
            .iter()
            .find(|r| r.image.id == id)
            .map(|r| r.image.clone());
        Ok(image.expect("a committed image is in the index"))
    }

    /// Moves unreferenced, unpinned blobs and layers out of the store
    /// (under the state lock, so no pull can start using them meanwhile)
    /// and returns the folders to delete once the lock is released.
    fn collect_garbage(&self, state: &State) -> Result<Vec<PathBuf>, ImageError> {
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<&str> = HashSet::new();
        for r in &state.records {
            blobs.insert(r.config_hex().to_string());
            for b in &r.layer_blobs {
                blobs.insert(b.trim_start_matches("sha256:").to_string());
            }
            layers.extend(r.image.layers.iter().map(String::as_str));
        }
        let io = |what: &Path| {
            let what = format!("cannot collect garbage in {}", what.display());
            move |e| ImageError::io(what, e)
        };
        let blobs_dir = self.blobs_dir();
        for entry in fs::read_dir(&blobs_dir).map_err(io(&blobs_dir))? {
            let entry = entry.map_err(io(&blobs_dir))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&hex) && !state.pinned.contains_key(&blob_key(&hex)) {
                tracing::debug!(blob = %hex, "removing unused blob");
                fs::remove_file(entry.path()).map_err(io(&blobs_dir))?;
            }
        }
        let layers_dir = self.layers_dir();
        let mut doomed = Vec::new();
        for entry in fs::read_dir(&layers_dir).map_err(io(&layers_dir))? {
            let entry = entry.map_err(io(&layers_dir))?;
            let hex = entry.file_name().to_string_lossy().into_owned();
            if !layers.contains(hex.as_str()) && !state.pinned.contains_key(&layer_key(&hex)) {
                tracing::debug!(layer = %hex, "removing unused layer");
                let grave = tempfile::Builder::new()
                    .prefix("gc-")
                    .tempdir_in(self.tmp_dir())
                    .map_err(io(&layers_dir))?
                    .keep();
                let dest = grave.join(&hex);
                fs::rename(entry.path(), &dest).map_err(io(&layers_dir))?;
                doomed.push(grave);
            }
        }
        Ok(doomed)
    }

    fn delete(&self, doomed: Vec<PathBuf>) {
        for dir in doomed {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot delete an unused layer");
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.blobs_dir().join(hex)
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

fn matches(image: &Image, lookup: &Lookup) -> bool {
    match lookup {
        Lookup::Id(id) => image.id == *id,
        Lookup::Tag(t) => image.repo_tags.contains(t),
        Lookup::RepoDigest(d) => image.repo_digests.contains(d),
    }
}

/// The repository part of `repo:tag` (the tag never holds a `/`).
fn repo_of_tag(tag: &str) -> &str {
    match tag.rfind(':') {
        Some(i) if !tag[i..].contains('/') => &tag[..i],
        _ => tag,
    }
}

/// The repository part of `repo@digest`.
fn repo_of_digest(repo_digest: &str) -> &str {
    repo_digest.split('@').next().unwrap_or(repo_digest)
}

/// Removes `tag` from `image`, and with its repository's last tag the
/// repository's digests: they were recorded by pulling that tag, and an
/// untagged image left behind would never go away by name.
fn untag(image: &mut Image, tag: &str) {
    if !image.repo_tags.iter().any(|t| t == tag) {
        return;
    }
    image.repo_tags.retain(|t| t != tag);
    let repo = repo_of_tag(tag);
    if !image.repo_tags.iter().any(|t| repo_of_tag(t) == repo) {
        image.repo_digests.retain(|d| repo_of_digest(d) != repo);
    }
}

/// `records` with `tag` on image `id` only (merging `new` into it, or
/// adding it), dropping images left without any name.
fn with_tag(records: &[Record], tag: Option<String>, id: &str, new: Option<Record>) -> Vec<Record> {
    let mut records = records.to_vec();
    if let Some(tag) = &tag {
        for r in records.iter_mut().filter(|r| r.image.id != id) {
            // The tag moved: the old image keeps its digests (like
            // containerd), so it stays until removed by id.
            r.image.repo_tags.retain(|t| t != tag);
        }
    }
    match records.iter_mut().find(|r| r.image.id == id) {
        Some(existing) => {
            if let Some(new) = new {
                for d in new.image.repo_digests {
                    if !existing.image.repo_digests.contains(&d) {
                        existing.image.repo_digests.push(d);
                    }
                }
            }
            if let Some(tag) = tag {
                if !existing.image.repo_tags.contains(&tag) {
                    existing.image.repo_tags.push(tag);
                }
            }
        }
        None => records.extend(new),
    }
    records.retain(|r| !r.is_unreferenced());
    records
}

fn parse_manifest(reference: &str, body: &[u8]) -> Result<Manifest, ImageError> {
    Manifest::parse(body).map_err(|detail| ImageError::BadContent {
        reference: reference.to_string(),
        what: "manifest",
        detail,
    })
}

fn parse_digest(reference: &str, what: &'static str, text: &str) -> Result<Digest, ImageError> {
    Digest::parse(text).ok_or_else(|| ImageError::BadContent {
        reference: reference.to_string(),
        what,
        detail: format!("unsupported digest {text:?} (only sha256)"),
    })
}

/// A descriptor's size as a download bound, capped at `cap`.
fn declared_size(desc: &Descriptor, cap: u64) -> u64 {
    match u64::try_from(desc.size) {
        Ok(n) if n > 0 => n.min(cap),
        _ => cap,
    }
}

/// Each layer's blob digest, diff-id and compressed size, after checking
/// media types and that the config lists one diff-id per layer.
fn layer_plan(
    reference: &str,
    manifest: &ImageManifest,
    config: &ConfigBlob,
) -> Result<Vec<(Digest, Digest, u64)>, ImageError> {
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::BadContent {
            reference: reference.to_string(),
            what: "config",
            detail: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| {
            if !manifest::is_layer_type(&desc.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    reference: reference.to_string(),
                    what: format!("layer {}", desc.digest),
                    media_type: desc.media_type.clone(),
                });
            }
            let blob = parse_digest(reference, "layer", &desc.digest)?;
            let diff_id = parse_digest(reference, "config", diff_id)?;
            Ok((blob, diff_id, declared_size(desc, DEFAULT_MAX_LAYER_BYTES)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon runs pulls on tonic's multi-threaded runtime.
    #[allow(dead_code)]
    fn pull_is_send(store: &ImageStore) {
        fn send<T: Send>(_: T) {}
        send(store.pull("busybox", RegistryAuth::Anonymous));
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ImageStore>();
    }

    #[test]
    fn splits_repos_of_tags_with_ports() {
        assert_eq!(
            repo_of_tag("127.0.0.1:5000/a/b:multi"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(
            repo_of_tag("docker.io/library/busybox:latest"),
            "docker.io/library/busybox"
        );
        assert_eq!(
            repo_of_digest("127.0.0.1:5000/a/b@sha256:00"),
            "127.0.0.1:5000/a/b"
        );
    }

    #[test]
    fn untagging_the_last_tag_of_a_repo_drops_its_digests() {
        let mut image = Image {
            id: "sha256:x".into(),
            repo_tags: vec!["r.io/a:1".into(), "r.io/a:2".into(), "r.io/b:1".into()],
            repo_digests: vec!["r.io/a@sha256:d".into(), "r.io/b@sha256:d".into()],
            size: 0,
            config: Default::default(),
            layers: vec![],
        };
        untag(&mut image, "r.io/a:1");
        assert_eq!(image.repo_digests.len(), 2);
        untag(&mut image, "r.io/a:2");
        assert_eq!(image.repo_digests, ["r.io/b@sha256:d"]);
        untag(&mut image, "r.io/b:1");
        assert!(image.repo_tags.is_empty() && image.repo_digests.is_empty());
    }
}
