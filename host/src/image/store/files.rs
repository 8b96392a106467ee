//! Reading one file out of an image's unpacked layers, as the daemon needs
//! for user and group names (`etc/passwd`, `etc/group`) before the
//! container exists. The layers are untrusted image content: no symlink is
//! followed (it could point anywhere on the host) and the size is capped.

use std::path::{Path, PathBuf};

/// Most bytes read from an image file.
const MAX_IMAGE_FILE_BYTES: u64 = 1 << 20;

/// `relative` from the highest of `layers` (lowest first) that has it.
pub(super) fn read_from_layers(layers: &[PathBuf], relative: &str) -> Option<String> {
    for layer in layers.iter().rev() {
        match lookup(layer, relative) {
            Found::File(path) => return std::fs::read_to_string(path).ok(),
            Found::Refused => return None,
            Found::Absent => continue,
        }
    }
    None
}

enum Found {
    File(PathBuf),
    /// A symlink on the way, or not a small regular file.
    Refused,
    Absent,
}

fn lookup(layer: &Path, relative: &str) -> Found {
    let mut path = layer.to_path_buf();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        if part == ".." {
            return Found::Refused;
        }
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Found::Refused,
            Ok(_) => {}
            Err(_) => return Found::Absent,
        }
    }
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() <= MAX_IMAGE_FILE_BYTES => Found::File(path),
        _ => Found::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![dir.path().join("low"), dir.path().join("high")];
        for layer in &layers {
            std::fs::create_dir_all(layer.join("etc")).unwrap();
        }
        (dir, layers)
    }

    #[test]
    fn the_top_layer_that_has_the_file_wins() {
        let (_dir, layers) = layers();
        std::fs::write(layers[0].join("etc/passwd"), "low").unwrap();
        assert_eq!(read_from_layers(&layers, "etc/passwd").unwrap(), "low");
        std::fs::write(layers[1].join("etc/passwd"), "high").unwrap();
        assert_eq!(read_from_layers(&layers, "etc/passwd").unwrap(), "high");
        assert_eq!(read_from_layers(&layers, "etc/group"), None);
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (_dir, layers) = layers();
        std::fs::write(layers[0].join("etc/passwd"), "low").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", layers[1].join("etc/passwd")).unwrap();
        assert_eq!(read_from_layers(&layers, "etc/passwd"), None);
        // A symlinked folder on the way is refused too.
        std::fs::remove_file(layers[1].join("etc/passwd")).unwrap();
        std::fs::remove_dir(layers[1].join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", layers[1].join("etc")).unwrap();
        assert_eq!(read_from_layers(&layers, "etc/passwd"), None);
    }

    #[test]
    fn big_files_folders_and_dotdot_are_refused() {
        let (_dir, layers) = layers();
        let big = vec![b'x'; MAX_IMAGE_FILE_BYTES as usize + 1];
        std::fs::write(layers[1].join("etc/passwd"), big).unwrap();
        assert_eq!(read_from_layers(&layers, "etc/passwd"), None);
        assert_eq!(read_from_layers(&layers, "etc"), None);
        assert_eq!(read_from_layers(&layers, "../high/etc/passwd"), None);
    }
}
