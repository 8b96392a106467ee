//! The container's process: arguments, environment, working directory and
//! terminal, from the CRI config over the image's defaults.

use std::path::{Component, Path, PathBuf};

use super::{SpecError, SpecInput};

/// What a container gets when the image sets no PATH (containerd's and
/// Docker's default); the agent looks the program up along it.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Kubernetes' rule: `command` replaces the image's ENTRYPOINT and `args`
/// its CMD; when `command` is set the image's CMD is not used at all.
pub(super) fn args(input: &SpecInput) -> Result<Vec<String>, SpecError> {
    let c = input.container;
    let image = input.image;
    let mut args = if c.command.is_empty() {
        image.entrypoint.clone()
    } else {
        c.command.clone()
    };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    match args.first() {
        None => Err(SpecError::invalid(
            "command",
            "no program to run: command, args and the image's entrypoint and cmd are all empty",
        )),
        Some(program) if program.is_empty() => Err(SpecError::invalid(
            if c.command.is_empty() {
                "args"
            } else {
                "command"
            },
            "the program (first element) is an empty string",
        )),
        Some(_) => Ok(args),
    }
}

/// The default PATH, then the image's variables, then `HOSTNAME` (as
/// containerd sets it), then the container's `envs`; a later value for the
/// same name replaces the earlier one in place. `HOME` is the user's home
/// when nothing set it (runc's rule).
pub(super) fn env(input: &SpecInput, home: &str) -> Result<Vec<String>, SpecError> {
    let mut env = Env::default();
    env.set_entry(DEFAULT_PATH);
    for entry in &input.image.env {
        if entry.contains('=') && !entry.contains('\0') {
            env.set_entry(entry);
        } else {
            tracing::warn!(entry, "image env entry is not NAME=VALUE; skipped");
        }
    }
    if !input.pod.hostname.is_empty() {
        env.set("HOSTNAME", &input.pod.hostname);
    }
    for (i, kv) in input.container.envs.iter().enumerate() {
        let bad = |reason: &str| Err(SpecError::invalid(format!("envs[{i}].key"), reason));
        if kv.key.is_empty() {
            return bad("is empty");
        }
        if kv.key.contains(['=', '\0']) {
            return bad(&format!("{:?} contains '=' or a NUL byte", kv.key));
        }
        if kv.value.contains('\0') {
            return Err(SpecError::invalid(
                format!("envs[{i}].value"),
                "contains a NUL byte",
            ));
        }
        env.set(&kv.key, &kv.value);
    }
    if !env.has("HOME") {
        env.set("HOME", home);
    }
    Ok(env.0)
}

/// `working_dir`, else the image's, else `/`.
pub(super) fn cwd(input: &SpecInput) -> Result<PathBuf, SpecError> {
    let (field, dir) = if !input.container.working_dir.is_empty() {
        ("working_dir", input.container.working_dir.as_str())
    } else {
        match input.image.working_dir.as_deref().filter(|d| !d.is_empty()) {
            Some(dir) => ("image.working_dir", dir),
            None => return Ok(PathBuf::from("/")),
        }
    };
    let path = Path::new(dir);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::invalid(
            field,
            format!("{dir:?} is not an absolute path without `..`"),
        ));
    }
    Ok(path.to_path_buf())
}

/// `NAME=VALUE` entries in order, names unique.
#[derive(Default)]
struct Env(Vec<String>);

impl Env {
    fn set_entry(&mut self, entry: &str) {
        let name = entry.split_once('=').map_or(entry, |(n, _)| n);
        let prefix = format!("{name}=");
        match self.0.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(e) => *e = entry.to_string(),
            None => self.0.push(entry.to_string()),
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.set_entry(&format!("{name}={value}"));
    }

    fn has(&self, name: &str) -> bool {
        let prefix = format!("{name}=");
        self.0.iter().any(|e| e.starts_with(&prefix))
    }
}

#[cfg(test)]
mod tests;
