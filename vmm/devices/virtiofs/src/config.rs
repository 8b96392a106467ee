//! The virtio-fs configuration space (virtio spec 5.11.4): the tag the
//! guest mounts by (`mount -t virtiofs TAG /mnt`) and how many request
//! queues the device has. It is read-only for the driver.

/// Longest tag the config space can hold (the field is not NUL-terminated
/// when full).
pub const TAG_MAX_LEN: usize = 36;

/// Bytes of `struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }`.
pub const CONFIG_SPACE_SIZE: usize = TAG_MAX_LEN + 4;

/// Why a tag cannot be put in the config space.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtio-fs tag {tag:?} is {len} bytes, it must be 1..={TAG_MAX_LEN}")]
    TagLength { tag: String, len: usize },
}

/// The config space, laid out once at construction since nothing in it
/// changes while the device lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
}

impl ConfigSpace {
    /// Lays out `tag` (zero-padded) and `num_request_queues` (little endian).
    pub fn new(tag: &str, num_request_queues: u32) -> Result<Self, Error> {
        let len = tag.len();
        if len == 0 || len > TAG_MAX_LEN {
            return Err(Error::TagLength {
                tag: tag.to_owned(),
                len,
            });
        }
        let mut bytes = [0u8; CONFIG_SPACE_SIZE];
        bytes[..len].copy_from_slice(tag.as_bytes());
        bytes[TAG_MAX_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
        Ok(Self { bytes })
    }

    /// Copies the bytes at `offset..offset + data.len()` that exist into
    /// `data`; bytes past the end are left as the caller filled them.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(src) = self.bytes.get(start..) else {
            return;
        };
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }

    /// The whole space (tests and diagnostics).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_zero_padded_and_queue_count_little_endian() {
        let config = ConfigSpace::new("work", 1).unwrap();
        let mut data = [0xffu8; CONFIG_SPACE_SIZE];
        config.read(0, &mut data);
        assert_eq!(&data[..4], b"work");
        assert!(data[4..TAG_MAX_LEN].iter().all(|&b| b == 0));
        assert_eq!(&data[TAG_MAX_LEN..], &[1, 0, 0, 0]);
    }

    #[test]
    fn full_length_tag_fills_the_field_without_terminator() {
        let tag = "a".repeat(TAG_MAX_LEN);
        let config = ConfigSpace::new(&tag, 1).unwrap();
        assert_eq!(&config.as_bytes()[..TAG_MAX_LEN], tag.as_bytes());
    }

    #[test]
    fn partial_and_unaligned_reads() {
        let config = ConfigSpace::new("shared", 1).unwrap();
        let mut two = [0u8; 2];
        config.read(1, &mut two);
        assert_eq!(&two, b"ha");
        let mut queues = [0u8; 4];
        config.read(TAG_MAX_LEN as u64, &mut queues);
        assert_eq!(u32::from_le_bytes(queues), 1);
        let mut one = [0xaa; 1];
        config.read(TAG_MAX_LEN as u64 + 1, &mut one);
        assert_eq!(one, [0]);
    }

    #[test]
    fn reads_past_the_end_leave_the_rest_untouched() {
        let config = ConfigSpace::new("t", 0x0102_0304).unwrap();
        let mut data = [0xaau8; 8];
        config.read(CONFIG_SPACE_SIZE as u64 - 2, &mut data);
        assert_eq!(data, [0x02, 0x01, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa]);
        for offset in [CONFIG_SPACE_SIZE as u64, 4096, u64::MAX] {
            let mut data = [0xaau8; 4];
            config.read(offset, &mut data);
            assert_eq!(data, [0xaa; 4], "offset {offset}");
        }
    }

    #[test]
    fn empty_and_overlong_tags_are_refused_by_name() {
        let err = ConfigSpace::new("", 1).unwrap_err().to_string();
        assert!(err.contains("\"\""), "{err}");
        let long = "x".repeat(TAG_MAX_LEN + 1);
        let err = ConfigSpace::new(&long, 1).unwrap_err().to_string();
        assert!(err.contains(&long) && err.contains("37"), "{err}");
    }
}
