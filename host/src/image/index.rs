//! The persisted image index: every image with what the store needs to
//! garbage-collect its blobs, written atomically on every change.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ImageError;
use super::fsutil;
use super::types::Image;

/// Bump on an incompatible change of the file's shape.
const VERSION: u32 = 1;

/// One image and the blobs it holds on to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub image: Image,
    /// The platform image manifest's digest (an index's child when the
    /// user pulled an index).
    pub manifest_digest: String,
    /// Compressed layer blob digests, in layer order.
    pub layer_blobs: Vec<String>,
}

impl Record {
    /// Hex of the config blob (the image id).
    pub fn config_hex(&self) -> &str {
        self.image
            .id
            .strip_prefix("sha256:")
            .unwrap_or(&self.image.id)
    }

    /// Whether no tag or digest refers to the image anymore.
    pub fn is_unreferenced(&self) -> bool {
        self.image.repo_tags.is_empty() && self.image.repo_digests.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    images: Vec<Record>,
}

/// Loads the index; a missing file is an empty store.
pub fn load(path: &Path) -> Result<Vec<Record>, ImageError> {
    let bad = |detail: String| ImageError::Index {
        path: path.display().to_string(),
        detail,
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let file: File = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
    if file.version != VERSION {
        return Err(bad(format!(
            "version {} (expected {VERSION})",
            file.version
        )));
    }
    Ok(file.images)
}

/// Writes the index atomically and durably.
pub fn save(path: &Path, records: &[Record]) -> Result<(), ImageError> {
    let file = File {
        version: VERSION,
        images: records.to_vec(),
    };
    let data = serde_json::to_vec_pretty(&file).map_err(|e| ImageError::Index {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    fsutil::atomic_write(path, &data).map_err(|e| ImageError::Index {
        path: path.display().to_string(),
        detail: format!("cannot write: {e}"),
    })
}
