//! The daemon's records on disk: one JSON file per pod and per container,
//! each replaced atomically (write a temporary file, fsync, rename, fsync
//! the folder) before the CRI call that changed it is answered. A restart
//! after `kill -9` at any point finds every record either before or after
//! the change, never half-written.

mod records;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use records::{
    ContainerRecord, ContainerState, ExitInfo, PodRecord, PodState, SandboxFiles, VmEnd, VmRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state record {path} is unreadable: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where the records live: `<root>/pods/<id>.json`,
/// `<root>/containers/<id>.json`.
#[derive(Debug, Clone)]
pub struct StateStore {
    pods: PathBuf,
    containers: PathBuf,
}

impl StateStore {
    pub fn open(root: &Path) -> Result<StateStore, StateError> {
        let store = StateStore {
            pods: root.join("pods"),
            containers: root.join("containers"),
        };
        for dir in [&store.pods, &store.containers] {
            fs::create_dir_all(dir).map_err(|source| StateError::Io {
                path: dir.clone(),
                source,
            })?;
            remove_temporaries(dir)?;
        }
        Ok(store)
    }

    pub fn save_pod(&self, pod: &PodRecord) -> Result<(), StateError> {
        write_atomic(&self.pods, &pod.id, pod)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), StateError> {
        remove(&self.pods, id)
    }

    pub fn save_container(&self, container: &ContainerRecord) -> Result<(), StateError> {
        write_atomic(&self.containers, &container.id, container)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StateError> {
        remove(&self.containers, id)
    }

    /// Every record, for recovery at start-up.
    pub fn load(&self) -> Result<(Vec<PodRecord>, Vec<ContainerRecord>), StateError> {
        Ok((load_all(&self.pods)?, load_all(&self.containers)?))
    }
}

const TEMP_SUFFIX: &str = ".tmp";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_atomic<T: Serialize>(dir: &Path, id: &str, value: &T) -> Result<(), StateError> {
    let path = dir.join(format!("{id}.json"));
    let temp = dir.join(format!("{id}.json{TEMP_SUFFIX}"));
    let bytes = serde_json::to_vec_pretty(value).expect("records always serialize");
    let mut file = File::create(&temp).map_err(io_err(&temp))?;
    file.write_all(&bytes).map_err(io_err(&temp))?;
    file.sync_all().map_err(io_err(&temp))?;
    fs::rename(&temp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn remove(dir: &Path, id: &str) -> Result<(), StateError> {
    let path = dir.join(format!("{id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A crash between create and rename leaves a temporary behind; the
/// record it was replacing is still whole.
fn remove_temporaries(dir: &Path) -> Result<(), StateError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn load_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StateError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|source| StateError::Corrupt { path, source })?;
        out.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str) -> PodRecord {
        PodRecord {
            id: id.into(),
            config: Default::default(),
            runtime_handler: "husk".into(),
            created_at_ns: 1,
            state: PodState::Ready,
            vm: None,
            sandbox_files: Default::default(),
        }
    }

    #[test]
    fn records_round_trip_and_temporaries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.save_pod(&pod("a")).unwrap();
        let mut b = pod("b");
        store.save_pod(&b).unwrap();
        b.state = PodState::NotReady;
        store.save_pod(&b).unwrap();
        std::fs::write(dir.path().join("pods/c.json.tmp"), b"{half").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (mut pods, containers) = store.load().unwrap();
        pods.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[1].state, PodState::NotReady);
        assert!(containers.is_empty());
        assert!(!dir.path().join("pods/c.json.tmp").exists());
        store.remove_pod("a").unwrap();
        store.remove_pod("a").unwrap();
        assert_eq!(store.load().unwrap().0.len(), 1);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("containers/x.json"), b"{").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("containers/x.json"), "{err}");
    }
}
