//! Checks on values the types alone cannot express. Each refusal names the
//! field as written in the file (`vm.default_vcpus`).

use std::path::Path;

use super::{Config, ConfigError};

/// More vCPUs than this is a configuration mistake, not a pod.
const VCPU_LIMIT: u8 = 64;
/// Less guest memory than this cannot boot the kernel and the agent.
const MIN_MEMORY_MIB: u64 = 64;
/// Levels a bare directive may name (a bare word that is not one of these
/// would be taken as a target name and silence everything else).
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

impl Config {
    /// Checks every field; [`Config::load`] and [`Config::from_toml`] call
    /// it, so a daemon never runs on a configuration that fails it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, path) in [
            ("socket", &self.socket),
            ("state_dir", &self.state_dir),
            ("image_dir", &self.image_dir),
            ("run_dir", &self.run_dir),
            ("vm.vmm", &self.vm.vmm),
            ("vm.kernel", &self.vm.kernel),
            ("vm.initramfs", &self.vm.initramfs),
        ] {
            check_absolute(field, path)?;
        }
        check_log_level(&self.log_level)?;
        for handler in &self.runtime_handlers {
            check_handler(handler)?;
        }
        self.check_vm()?;
        self.registry.options()?;
        Ok(())
    }

    fn check_vm(&self) -> Result<(), ConfigError> {
        let vm = &self.vm;
        if !(1..=VCPU_LIMIT).contains(&vm.max_vcpus) {
            return Err(ConfigError::invalid(
                "vm.max_vcpus",
                format!("{} is out of range 1..={VCPU_LIMIT}", vm.max_vcpus),
            ));
        }
        if !(1..=vm.max_vcpus).contains(&vm.default_vcpus) {
            return Err(ConfigError::invalid(
                "vm.default_vcpus",
                format!("{} is out of range 1..={}", vm.default_vcpus, vm.max_vcpus),
            ));
        }
        for (field, mib) in [
            ("vm.default_memory_mib", vm.default_memory_mib),
            ("vm.max_memory_mib", vm.max_memory_mib),
        ] {
            if mib < MIN_MEMORY_MIB {
                return Err(ConfigError::invalid(
                    field,
                    format!("{mib} MiB is below the minimum of {MIN_MEMORY_MIB} MiB"),
                ));
            }
        }
        if vm.default_memory_mib > vm.max_memory_mib {
            return Err(ConfigError::invalid(
                "vm.default_memory_mib",
                format!(
                    "{} MiB is above vm.max_memory_mib ({} MiB)",
                    vm.default_memory_mib, vm.max_memory_mib
                ),
            ));
        }
        if vm.overhead_memory_mib >= vm.max_memory_mib {
            return Err(ConfigError::invalid(
                "vm.overhead_memory_mib",
                format!(
                    "{} MiB leaves no room for containers within vm.max_memory_mib ({} MiB)",
                    vm.overhead_memory_mib, vm.max_memory_mib
                ),
            ));
        }
        if vm.boot_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "vm.boot_timeout_secs",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

fn check_absolute(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{:?} is not an absolute path", path),
        ))
    }
}

/// Must parse as an EnvFilter, and a directive without `=` must be a level:
/// `log_level = "debgu"` would otherwise parse as a target name and turn
/// off all other logging.
fn check_log_level(level: &str) -> Result<(), ConfigError> {
    const FIELD: &str = "log_level";
    if level.trim().is_empty() {
        return Err(ConfigError::invalid(FIELD, "must not be empty"));
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| ConfigError::invalid(FIELD, format!("{level:?}: {e}")))?;
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::invalid(
                FIELD,
                format!(
                    "{directive:?} is not a level ({}); use target=level for one module",
                    LEVELS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// RuntimeClass handler names as Kubernetes allows them (DNS labels and
/// dots); the empty handler needs no entry.
fn check_handler(handler: &str) -> Result<(), ConfigError> {
    let ok = !handler.is_empty()
        && handler
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "runtime_handlers",
            format!("{handler:?} is not a handler name of [a-z0-9-.]"),
        ))
    }
}
