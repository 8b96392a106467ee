//! Everything the host sends about a container, parsed and checked before
//! any process, folder or cgroup exists: ids, OCI JSON, layers and the
//! parts of the spec this engine refuses. Each error names the field.

use std::path::{Component, Path, PathBuf};

use husk_proto::{MAX_ID_BYTES, MAX_LAYERS, MAX_SPEC_BYTES};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use serde::de::DeserializeOwned;

/// A request field the engine refuses; always gRPC INVALID_ARGUMENT.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {len} bytes is above the limit of {limit}")]
    TooLarge {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: malformed JSON at `{path}`: {error}")]
    Json {
        field: &'static str,
        path: String,
        error: String,
    },
}

impl SpecError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a container or exec id: 1-128 of `[A-Za-z0-9_.-]`, not starting
/// with `.` or `-`, so it is safe as a folder and cgroup name.
pub fn check_id(field: &'static str, id: &str) -> Result<(), SpecError> {
    let reason = if id.is_empty() {
        "must not be empty"
    } else if id.len() > MAX_ID_BYTES {
        "is longer than 128 bytes"
    } else if id.starts_with(['.', '-']) {
        "must not start with '.' or '-'"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        "may only hold letters, digits, '_', '.' and '-'"
    } else {
        return Ok(());
    };
    Err(SpecError::invalid(field, format!("{id:?} {reason}")))
}

/// Parses bounded JSON, reporting the path of the first bad field.
fn parse_json<T: DeserializeOwned>(field: &'static str, json: &[u8]) -> Result<T, SpecError> {
    if json.len() > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge {
            field,
            len: json.len(),
            limit: MAX_SPEC_BYTES,
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| SpecError::Json {
        field,
        path: e.path().to_string(),
        error: e.inner().to_string(),
    })
}

/// Parses and checks a container's OCI runtime spec.
pub fn parse_spec(json: &[u8]) -> Result<Spec, SpecError> {
    let spec: Spec = parse_json("oci_spec_json", json)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::invalid("process", "is required"))?;
    check_process("process", process)?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| SpecError::invalid("linux", "is required"))?;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        match ns.typ() {
            LinuxNamespaceType::User => {
                return Err(SpecError::invalid(
                    field,
                    "user namespaces are not supported yet",
                ))
            }
            LinuxNamespaceType::Time => {
                return Err(SpecError::invalid(
                    field,
                    "time namespaces are not supported",
                ))
            }
            _ => {}
        }
        if let Some(path) = ns.path() {
            check_absolute(&format!("{field}.path"), path)?;
        }
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(SpecError::invalid(
            "linux.uidMappings",
            "user namespaces are not supported yet",
        ));
    }
    for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
        check_sysctl(&format!("linux.sysctl[{key:?}]"), key)?;
    }
    Ok(spec)
}

/// Parses and checks an exec'd process.
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    let process: Process = parse_json("process_json", json)?;
    check_process("process_json", &process)?;
    Ok(process)
}

/// Parses new cgroup limits.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources, SpecError> {
    parse_json("resources_json", json)
}

fn check_process(prefix: &str, process: &Process) -> Result<(), SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    match args.first() {
        None => return Err(SpecError::invalid(format!("{prefix}.args"), "is empty")),
        Some(a) if a.is_empty() => {
            return Err(SpecError::invalid(
                format!("{prefix}.args[0]"),
                "is an empty string",
            ))
        }
        _ => {}
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.contains('\0') {
            return Err(SpecError::invalid(
                format!("{prefix}.args[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (i, var) in process.env().iter().flatten().enumerate() {
        if var.contains('\0') || !var.contains('=') {
            return Err(SpecError::invalid(
                format!("{prefix}.env[{i}]"),
                format!("{var:?} is not NAME=VALUE without NUL bytes"),
            ));
        }
    }
    check_absolute(&format!("{prefix}.cwd"), process.cwd())?;
    Ok(())
}

fn check_absolute(field: &str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::invalid(
            field,
            format!("{} is not absolute", path.display()),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::invalid(
            field,
            format!("{} has `..` components", path.display()),
        ));
    }
    Ok(())
}

/// Only sysctls the kernel scopes to a namespace the sandbox owns: anything
/// else would change the whole guest (or, outside a VM, the host).
pub fn check_sysctl(field: &str, key: &str) -> Result<(), SpecError> {
    let namespaced = key.starts_with("net.")
        || key.starts_with("fs.mqueue.")
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem";
    let well_formed = !key.is_empty()
        && key
            .split('.')
            .all(|p| !p.is_empty() && p != ".." && !p.contains('/'));
    if namespaced && well_formed {
        Ok(())
    } else {
        Err(SpecError::invalid(
            field,
            format!("{key:?} is not a namespaced sysctl (net.*, fs.mqueue.*, kernel.shm*, kernel.msg*, kernel.sem)"),
        ))
    }
}

/// Resolves the container's image layers: relative folders under
/// `layer_root`, no `..`, existing, and still inside it once symlinks
/// are resolved.
pub fn resolve_layers(layer_root: &Path, layers: &[String]) -> Result<Vec<PathBuf>, SpecError> {
    if layers.is_empty() {
        return Err(SpecError::invalid(
            "layers",
            "at least one layer is required",
        ));
    }
    if layers.len() > MAX_LAYERS {
        return Err(SpecError::invalid(
            "layers",
            format!("{} layers is above the limit of {MAX_LAYERS}", layers.len()),
        ));
    }
    let root = layer_root.canonicalize().map_err(|e| {
        SpecError::invalid(
            "layers",
            format!(
                "layer folder {} is not available: {e}",
                layer_root.display()
            ),
        )
    })?;
    layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let field = format!("layers[{i}]");
            let rel = Path::new(layer);
            if layer.is_empty()
                || rel.is_absolute()
                || rel.components().any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(SpecError::invalid(
                    field,
                    format!("{layer:?} must be a relative path without `.` or `..`"),
                ));
            }
            let path = root
                .join(rel)
                .canonicalize()
                .map_err(|e| SpecError::invalid(&field, format!("{layer:?}: {e}")))?;
            if !path.starts_with(&root) {
                return Err(SpecError::invalid(
                    field,
                    format!("{layer:?} leads outside the layer folder through a symlink"),
                ));
            }
            if !path.is_dir() {
                return Err(SpecError::invalid(
                    field,
                    format!("{layer:?} is not a folder"),
                ));
            }
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/bin/true"],"cwd":"/"},"root":{"path":"rootfs"},"linux":{}}"#;

    #[test]
    fn ids() {
        for good in ["a", "abc-1.2_3", &"x".repeat(128)] {
            check_id("container_id", good).unwrap();
        }
        for bad in ["", ".a", "-a", "a/b", "a b", "..", &"x".repeat(129), "é"] {
            let err = check_id("container_id", bad).unwrap_err().to_string();
            assert!(err.starts_with("container_id: "), "{err}");
        }
    }

    #[test]
    fn minimal_spec_parses() {
        let spec = parse_spec(MINIMAL.as_bytes()).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_ref().unwrap()[0],
            "/bin/true"
        );
    }

    #[test]
    fn malformed_spec_names_the_field() {
        let bad = MINIMAL.replace(r#""uid":0"#, r#""uid":"root""#);
        let err = parse_spec(bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("process.user.uid"), "{err}");
        let err = parse_spec(b"{not json").unwrap_err().to_string();
        assert!(err.starts_with("oci_spec_json: malformed JSON"), "{err}");
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                MINIMAL.replace(r#""args":["/bin/true"]"#, r#""args":[]"#),
                "process.args",
            ),
            (
                MINIMAL.replace(r#""cwd":"/""#, r#""cwd":"rel""#),
                "process.cwd",
            ),
            (
                MINIMAL.replace(r#""cwd":"/""#, r#""cwd":"/a/../b""#),
                "process.cwd",
            ),
            (
                MINIMAL.replace(
                    r#""linux":{}"#,
                    r#""linux":{"namespaces":[{"type":"user"}]}"#,
                ),
                "linux.namespaces[0]",
            ),
            (
                MINIMAL.replace(
                    r#""linux":{}"#,
                    r#""linux":{"sysctl":{"kernel.panic":"1"}}"#,
                ),
                "linux.sysctl",
            ),
            (MINIMAL.replace(r#","linux":{}"#, ""), "linux"),
        ];
        for (json, field) in cases {
            let err = parse_spec(json.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn oversized_spec_is_refused() {
        let big = vec![b' '; MAX_SPEC_BYTES + 1];
        assert!(matches!(parse_spec(&big), Err(SpecError::TooLarge { .. })));
    }

    #[test]
    fn sysctls() {
        for good in [
            "net.ipv4.ip_forward",
            "kernel.shmmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
        ] {
            check_sysctl("s", good).unwrap();
        }
        for bad in ["kernel.panic", "vm.swappiness", "net..x", "net.a/b", "net."] {
            check_sysctl("s", bad).unwrap_err();
        }
    }

    #[test]
    fn layers() {
        let dir = std::env::temp_dir().join(format!("husk-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/base")).unwrap();
        std::fs::write(dir.join("root/file"), b"").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("root/escape")).unwrap();
        let root = dir.join("root");
        let got = resolve_layers(&root, &["base".into()]).unwrap();
        assert_eq!(got, vec![root.canonicalize().unwrap().join("base")]);
        for (bad, why) in [
            ("../x", "relative path"),
            ("/abs", "relative path"),
            ("", "relative path"),
            ("missing", "No such file"),
            ("file", "not a folder"),
            ("escape", "outside the layer folder"),
        ] {
            let err = resolve_layers(&root, &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("layers[0]: ") && err.contains(why),
                "{bad}: {err}"
            );
        }
        assert!(resolve_layers(&root, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
