//! Pulling: manifest (through an index to linux/amd64), config and layers,
//! each verified against its digest, downloaded and unpacked once even when
//! pulls race, pinned against garbage collection until recorded.

use std::fs;
use std::path::PathBuf;

use super::layout::{blob_key, layer_key};
use super::{gc, tags, ImageStore};
use crate::image::digest::Digest;
use crate::image::endpoints::{self, Endpoint, Role};
use crate::image::error::{EndpointFailure, ImageError};
use crate::image::fsutil;
use crate::image::index::{self, Record};
use crate::image::manifest::{self, ConfigBlob, Descriptor, ImageManifest, Manifest};
use crate::image::reference::ImageName;
use crate::image::registry::Registry;
use crate::image::types::{Image, RegistryAuth};
use crate::image::unpack::{self, DEFAULT_MAX_LAYER_BYTES};

/// Largest image config we read into memory.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Releases pins when a pull ends, whatever the outcome.
pub(super) struct Pins<'s> {
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

impl ImageStore {
    /// Pulls `reference` (linux/amd64 from an index), verifying every
    /// digest, and records it under that name. Pulling an image already
    /// here costs one manifest request (to see whether the tag moved).
    ///
    /// The image's registry may have mirrors (see [`endpoints`]): each
    /// endpoint is tried in turn with the whole pull, until one serves it;
    /// a mirror is as untrusted as any registry. Blobs one endpoint
    /// delivered (verified) are kept for the next.
    pub async fn pull(&self, reference: &str, auth: RegistryAuth) -> Result<Image, ImageError> {
        let name = ImageName::parse(reference)?;
        let route = endpoints::resolve(&self.options, &name.reference, auth);
        let mut failures = Vec::new();
        let mut result = None;
        for endpoint in &route.endpoints {
            match self.pull_from(&name, endpoint).await {
                Ok(image) => {
                    if endpoint.role == Role::Mirror {
                        tracing::info!(reference = %name, %endpoint, "pulled from a mirror");
                    }
                    result = Some(Ok(image));
                    break;
                }
                Err(e) if e.is_local() || route.upstream_only() => {
                    result = Some(Err(e));
                    break;
                }
                Err(error) => {
                    tracing::warn!(reference = %name, %endpoint, %error, "endpoint failed");
                    failures.push(EndpointFailure {
                        endpoint: endpoint.to_string(),
                        upstream: endpoint.role == Role::Upstream,
                        error,
                    });
                }
            }
        }
        let result = result.unwrap_or_else(|| {
            Err(ImageError::AllEndpointsFailed {
                reference: name.to_string(),
                failures,
                skipped_upstream: route.skipped_upstream.clone(),
            })
        });
        if result.is_err() {
            // Leave nothing of a failed pull behind (its pins are gone).
            let garbage = {
                let state = self.state();
                self.collect_garbage(&state)
            };
            match garbage {
                Ok(g) => gc::delete(g),
                Err(e) => tracing::warn!(error = %e, "cannot clean up after a failed pull"),
            }
        }
        result
    }

    /// One attempt: the whole pull from one endpoint.
    async fn pull_from(&self, name: &ImageName, endpoint: &Endpoint) -> Result<Image, ImageError> {
        let registry = Registry::connect(endpoint, name).await?;
        self.pull_name(name, &registry).await
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
        let path = self.layout.blob_path(digest.hex());
        if path.exists() {
            return Ok(path);
        }
        let io = |what: &str| {
            let what = format!("{what} blob {digest}");
            move |e| ImageError::io(what, e)
        };
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.layout.tmp_dir())
            .map_err(io("cannot create a temp file for"))?;
        registry
            .blob(&name.reference, digest, max_bytes, tmp.as_file_mut())
            .await?;
        tmp.as_file().sync_all().map_err(io("cannot sync"))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .map_err(io("cannot store"))?;
        fsutil::sync_dir(&self.layout.blobs_dir()).map_err(io("cannot sync the folder of"))?;
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
        let dir = self.layout.layer_dir(diff_id.hex());
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
            .tempdir_in(self.layout.tmp_dir())
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
        fsutil::sync_dir(&self.layout.layers_dir()).map_err(io("cannot sync the folder of"))?;
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
        let records = tags::with_tag(&state.records, name.tag(), &id, None);
        if records != state.records {
            index::save(&self.layout.index_path(), &records)?;
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
            let records = tags::with_tag(&state.records, name.tag(), &id, Some(record));
            index::save(&self.layout.index_path(), &records)?;
            state.records = records;
            self.collect_garbage(&state)?
        };
        gc::delete(garbage);
        let state = self.state();
        let image = state
            .records
            .iter()
            .find(|r| r.image.id == id)
            .map(|r| r.image.clone());
        Ok(image.expect("a committed image is in the index"))
    }
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
}
