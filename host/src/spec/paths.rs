//! `linux.maskedPaths` and `linux.readonlyPaths`: kernel interfaces in
//! /proc and /sys a container should neither read nor change.

use k8s_cri::v1::LinuxContainerSecurityContext;

/// containerd's default masked paths.
pub(super) const DEFAULT_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub(super) const DEFAULT_READONLY: &[&str] = &[
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `(masked, readonly)`: each the CRI's list when it is non-empty (kubelet
/// sends them for the default procMount), else the default; both empty for
/// a privileged container (the CRI: "sensitive paths are not masked").
pub(super) fn build(sc: &LinuxContainerSecurityContext) -> (Vec<String>, Vec<String>) {
    if sc.privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |cri: &[String], default: &[&str]| {
        if cri.is_empty() {
            default.iter().map(|p| p.to_string()).collect()
        } else {
            cri.to_vec()
        }
    };
    (
        pick(&sc.masked_paths, DEFAULT_MASKED),
        pick(&sc.readonly_paths, DEFAULT_READONLY),
    )
}
