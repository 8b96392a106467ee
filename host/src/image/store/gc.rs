//! Garbage collection: blobs and layers no recorded image uses and no
//! pull in flight has pinned go.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::layout::{blob_key, layer_key, StoreLayout};
use crate::image::error::ImageError;
use crate::image::index::Record;

/// Moves unreferenced, unpinned blobs and layers out of the store (the
/// caller holds the state lock, so no pull can start using them meanwhile)
/// and returns the folders to delete once the lock is released.
pub(super) fn collect(
    layout: &StoreLayout,
    records: &[Record],
    pinned: &HashMap<String, usize>,
) -> Result<Vec<PathBuf>, ImageError> {
    let mut blobs: HashSet<String> = HashSet::new();
    let mut layers: HashSet<&str> = HashSet::new();
    for r in records {
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
    let blobs_dir = layout.blobs_dir();
    for entry in fs::read_dir(&blobs_dir).map_err(io(&blobs_dir))? {
        let entry = entry.map_err(io(&blobs_dir))?;
        let hex = entry.file_name().to_string_lossy().into_owned();
        if !blobs.contains(&hex) && !pinned.contains_key(&blob_key(&hex)) {
            tracing::debug!(blob = %hex, "removing unused blob");
            fs::remove_file(entry.path()).map_err(io(&blobs_dir))?;
        }
    }
    let layers_dir = layout.layers_dir();
    let mut doomed = Vec::new();
    for entry in fs::read_dir(&layers_dir).map_err(io(&layers_dir))? {
        let entry = entry.map_err(io(&layers_dir))?;
        let hex = entry.file_name().to_string_lossy().into_owned();
        if !layers.contains(hex.as_str()) && !pinned.contains_key(&layer_key(&hex)) {
            tracing::debug!(layer = %hex, "removing unused layer");
            let grave = tempfile::Builder::new()
                .prefix("gc-")
                .tempdir_in(layout.tmp_dir())
                .map_err(io(&layers_dir))?
                .keep();
            let dest = grave.join(&hex);
            fs::rename(entry.path(), &dest).map_err(io(&layers_dir))?;
            doomed.push(grave);
        }
    }
    Ok(doomed)
}

/// Deletes what [`collect`] moved aside.
pub(super) fn delete(doomed: Vec<PathBuf>) {
    for dir in doomed {
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot delete an unused layer");
        }
    }
}
