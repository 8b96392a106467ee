//! Where the store keeps things under its root:
//! - `images.json`: the index ([`crate::image::index`]);
//! - `blobs/sha256/<hex>`: configs and compressed layers, verified;
//! - `layers/<diff-id hex>/`: unpacked layers, read-only by convention;
//! - `tmp/`: downloads and unpacks in progress, renamed into place when
//!   complete and durable; emptied on open.

use std::path::{Path, PathBuf};

pub(super) struct StoreLayout {
    root: PathBuf,
}

impl StoreLayout {
    pub fn new(root: &Path) -> Self {
        StoreLayout {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.blobs_dir().join(hex)
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn layer_dir(&self, diff_id_hex: &str) -> PathBuf {
        self.layers_dir().join(diff_id_hex)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// The pin (and download lock) key of a blob.
pub(super) fn blob_key(hex: &str) -> String {
    format!("blob:{hex}")
}

/// The pin (and unpack lock) key of a layer.
pub(super) fn layer_key(hex: &str) -> String {
    format!("layer:{hex}")
}
