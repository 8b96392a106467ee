//! Manifests, indexes and image configs, parsed with our own small serde
//! types: we only need a few fields, and tolerating the variety found in
//! real registries (nulls, missing media types, Docker v2 vs OCI) is easier
//! than bending a complete model.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::types::ImageConfig;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What we ask the registry for (Accept), in preference order.
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Layer media types we unpack (the compression itself is sniffed).
const LAYER_TYPES: [&str; 9] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

pub fn is_config_type(media_type: &str) -> bool {
    CONFIG_TYPES.contains(&media_type)
}

pub fn is_layer_type(media_type: &str) -> bool {
    LAYER_TYPES.contains(&media_type)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A single-platform image manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageManifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// A manifest as fetched: an image, or an index to choose from.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses a manifest body; the error says what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Manifest, String> {
        let probe: Probe = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        if probe.schema_version != Some(2) {
            return Err(format!(
                "schemaVersion {:?} (only 2 is supported)",
                probe.schema_version
            ));
        }
        let image = |body| {
            serde_json::from_slice(body)
                .map(Manifest::Image)
                .map_err(|e| format!("bad image manifest: {e}"))
        };
        match probe.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => {
                Ok(Manifest::Index(probe.manifests.unwrap_or_default()))
            }
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => image(body),
            // OCI allows leaving mediaType out; the shape tells.
            None => match probe.manifests {
                Some(m) => Ok(Manifest::Index(m)),
                None => image(body),
            },
            Some(other) => Err(format!("unsupported manifest media type {other:?}")),
        }
    }
}

/// Picks the linux/amd64 image of an index (our guests are x86_64,
/// whatever the host running the store is); the error lists what the
/// index offers.
pub fn choose_amd64(entries: &[Descriptor]) -> Result<&Descriptor, String> {
    let is_amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    entries.iter().find(is_amd64).ok_or_else(|| {
        let offered: Vec<String> = entries
            .iter()
            .map(|d| match &d.platform {
                Some(p) => p.to_string(),
                None => "(no platform)".into(),
            })
            .collect();
        if offered.is_empty() {
            "nothing (empty index)".into()
        } else {
            offered.join(", ")
        }
    })
}

/// The parts of an image config blob we use.
#[derive(Debug, Deserialize)]
pub struct ConfigBlob {
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

impl ConfigBlob {
    pub fn image_config(&self) -> ImageConfig {
        let empty = RunConfig::default();
        let c = self.config.as_ref().unwrap_or(&empty);
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            user: non_empty(&c.user),
            env: c.env.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            working_dir: non_empty(&c.working_dir),
            labels: c.labels.clone().unwrap_or_default(),
            stop_signal: non_empty(&c.stop_signal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_linux_amd64_and_lists_the_rest() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,
               "platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,
               "platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Manifest::Index(entries) = Manifest::parse(index).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(choose_amd64(&entries).unwrap().digest, "sha256:b");
        let err = choose_amd64(&entries[..1]).unwrap_err();
        assert_eq!(err, "linux/arm64/v8");
    }

    #[test]
    fn reads_docker_configs_with_nulls() {
        let blob = br#"{"architecture":"amd64","os":"linux",
            "config":{"User":"","Env":["A=1"],"Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/w",
                      "Labels":null,"StopSignal":"SIGQUIT"},
            "rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#;
        let config: ConfigBlob = serde_json::from_slice(blob).unwrap();
        let c = config.image_config();
        assert_eq!(c.user, None);
        assert_eq!(c.env, ["A=1"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.cmd, ["sh"]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(config.rootfs.diff_ids, ["sha256:x"]);
    }

    #[test]
    fn refuses_schema_1_and_unknown_types() {
        assert!(Manifest::parse(br#"{"schemaVersion":1}"#).is_err());
        assert!(Manifest::parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#).is_err());
        assert!(is_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"));
        assert!(!is_layer_type("application/vnd.wasm.content.layer.v1+wasm"));
    }
}
