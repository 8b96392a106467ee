//! Mounts the host folder that the VMM shares over virtio-fs (tag
//! `husk-shared`) at /run/husk/shared. Optional: a VM without the device
//! (QEMU in the benchmark, a pod without volumes) boots the same, and a
//! failed mount is reported on the console instead of stopping the guest,
//! because the agent API is still the host's way to find out what happened.

use std::io;
use std::path::Path;

use husk_proto::{SHARED_DIR_GUEST_PATH, SHARED_DIR_TAG};
use nix::mount::{mount, MsFlags};

/// Where the kernel lists virtio devices; each has a `device` file holding
/// its virtio device id.
const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
/// The virtio device id of a filesystem device (virtio spec 5.11).
const VIRTIO_ID_FS: u32 = 26;

/// Why the shared folder was not mounted.
#[derive(Debug, thiserror::Error)]
pub enum SharedMountError {
    #[error("cannot create {SHARED_DIR_GUEST_PATH}: {0}")]
    CreateDir(#[source] io::Error),
    #[error("cannot mount virtiofs tag {SHARED_DIR_TAG} on {SHARED_DIR_GUEST_PATH}: {0}")]
    Mount(#[source] nix::Error),
}

/// Mounts the shared folder if a virtio-fs device exists; says on the
/// console what happened when something went wrong. Never fails the boot.
pub fn mount_if_present() {
    if !has_virtio_device(Path::new(VIRTIO_DEVICES), VIRTIO_ID_FS) {
        return;
    }
    if let Err(e) = mount_shared() {
        eprintln!("husk-agent: warning: {e}; continuing without the shared folder");
    }
}

fn mount_shared() -> Result<(), SharedMountError> {
    std::fs::create_dir_all(SHARED_DIR_GUEST_PATH).map_err(SharedMountError::CreateDir)?;
    mount(
        Some(SHARED_DIR_TAG),
        SHARED_DIR_GUEST_PATH,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(SharedMountError::Mount)
}

/// Whether any device under `devices` (a `/sys/bus/virtio/devices`-like
/// folder) has virtio device id `id`. An unreadable folder means "no".
fn has_virtio_device(devices: &Path, id: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(devices) else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("device"))
            .ok()
            .and_then(|text| parse_id(&text))
            == Some(id)
    })
}

/// `0x001a\n` → 26 (sysfs prints virtio ids in hex with a `0x` prefix).
fn parse_id(text: &str) -> Option<u32> {
    let text = text.trim();
    let hex = text.strip_prefix("0x").unwrap_or(text);
    u32::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_ids() {
        assert_eq!(parse_id("0x001a\n"), Some(26));
        assert_eq!(parse_id("0x0013"), Some(19));
        assert_eq!(parse_id("junk"), None);
    }

    #[test]
    fn finds_a_fs_device_among_others() {
        let dir = std::env::temp_dir().join(format!("husk-agent-virtio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, id) in [("virtio0", "0x0013\n"), ("virtio1", "0x0002\n")] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("device"), id).unwrap();
        }
        assert!(!has_virtio_device(&dir, VIRTIO_ID_FS), "vsock and blk only");
        std::fs::create_dir_all(dir.join("virtio2")).unwrap();
        std::fs::write(dir.join("virtio2/device"), "0x001a\n").unwrap();
        assert!(has_virtio_device(&dir, VIRTIO_ID_FS));
        assert!(!has_virtio_device(&dir.join("missing"), VIRTIO_ID_FS));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
