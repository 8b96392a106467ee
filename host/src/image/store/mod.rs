//! The node's image store: pulls images, keeps blobs content-addressed
//! and layers unpacked once, shared by every pod.
//!
//! [`ImageStore`] (here) is the API the CRI ImageService and the runtime
//! call; its parts lean one way, on nothing but the layout:
//! - [`layout`]: where everything lives under the store's root;
//! - [`tags`]: which image a name means, moving and dropping names;
//! - [`gc`]: finding and deleting blobs and layers no image uses;
//! - [`pull`]: fetching, verifying and unpacking an image;
//! - [`files`]: reading a file out of an image's layers.

mod files;
mod gc;
mod layout;
mod pull;
mod tags;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::error::ImageError;
use super::fsutil;
use super::index::{self, Record};
use super::locks::KeyedLocks;
use super::reference::Lookup;
use super::types::{FsUsage, Image, RegistryOptions};
use layout::StoreLayout;

pub struct ImageStore {
    layout: StoreLayout,
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

impl ImageStore {
    /// Opens (creating) the store at `root`: loads the index, drops
    /// leftovers of interrupted pulls and images whose files are gone, and
    /// collects unreferenced blobs and layers.
    pub fn open(root: &Path, registry: RegistryOptions) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            layout: StoreLayout::new(root),
            options: registry,
            state: Mutex::new(State::default()),
            locks: KeyedLocks::default(),
        };
        for dir in [
            store.layout.blobs_dir(),
            store.layout.layers_dir(),
            store.layout.tmp_dir(),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
        }
        fsutil::empty_dir(&store.layout.tmp_dir()).map_err(|e| {
            ImageError::io(
                format!("cannot clean {}", store.layout.tmp_dir().display()),
                e,
            )
        })?;
        let mut records = index::load(&store.layout.index_path())?;
        let before = records.len();
        records.retain(|r| {
            let complete = store.layout.blob_path(r.config_hex()).exists()
                && r.image.layers.iter().all(|l| store.layer_dir(l).is_dir());
            if !complete {
                tracing::warn!(image = %r.image.id, "dropping an image whose files are missing");
            }
            complete
        });
        if records.len() != before {
            index::save(&store.layout.index_path(), &records)?;
        }
        let garbage = {
            let mut state = store.state();
            state.records = records;
            store.collect_garbage(&state)?
        };
        gc::delete(garbage);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The unpacked, read-only folder of one layer (a key of
    /// [`Image::layers`]).
    pub fn layer_dir(&self, layer_key: &str) -> PathBuf {
        self.layout.layer_dir(layer_key)
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
            .find(|r| tags::matches(&r.image, &lookup))
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
                        tags::untag(&mut r.image, tag);
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
            index::save(&self.layout.index_path(), &records)?;
            state.records = records;
            self.collect_garbage(&state)?
        };
        gc::delete(garbage);
        Ok(())
    }

    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let root = self.layout.root();
        let (used_bytes, inodes_used) = fsutil::usage(root)
            .map_err(|e| ImageError::io(format!("cannot measure {}", root.display()), e))?;
        Ok(FsUsage {
            mountpoint: root.to_owned(),
            used_bytes,
            inodes_used,
        })
    }

    /// The text of `relative` (e.g. `etc/passwd`) as the image's
    /// container would see it: from the highest layer that has it, never
    /// through a symlink, at most 1 MiB; `None` otherwise.
    pub fn read_image_file(&self, image: &Image, relative: &str) -> Option<String> {
        let layers: Vec<PathBuf> = image.layers.iter().map(|l| self.layer_dir(l)).collect();
        files::read_from_layers(&layers, relative)
    }

    /// Moves what no image uses out of the store (see [`gc::collect`]).
    fn collect_garbage(&self, state: &State) -> Result<Vec<PathBuf>, ImageError> {
        gc::collect(&self.layout, &state.records, &state.pinned)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ImageStore>();
    }
}
