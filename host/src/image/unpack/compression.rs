//! Layer compression, told by the stream's magic bytes rather than the
//! media type alone: registries and build tools mislabel layers (a gzip
//! blob typed as plain `tar` is common), and the bytes cannot lie.

use std::io::{self, BufRead, BufReader, Read};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognizes a stream from its first bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `blob` in the decompressor its magic bytes call for.
pub fn decompress<'a, R: Read + 'a>(blob: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut reader = BufReader::with_capacity(128 * 1024, blob);
    // fill_buf may return fewer than four bytes; a stream that short is
    // not a valid tar either, and the tar parser says so.
    let head = reader.fill_buf()?;
    let kind = Compression::sniff(head);
    let stream: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(reader),
        // Multi-member: some tools write a layer as several gzip members.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    };
    Ok((kind, stream))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn roundtrip(data: &[u8], blob: Vec<u8>, expected: Compression) {
        let (kind, mut stream) = decompress(&blob[..]).unwrap();
        assert_eq!(kind, expected);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn detects_gzip_zstd_and_plain() {
        let data = b"some tar bytes, really".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        roundtrip(&data, gz.finish().unwrap(), Compression::Gzip);
        roundtrip(
            &data,
            zstd::encode_all(&data[..], 3).unwrap(),
            Compression::Zstd,
        );
        roundtrip(&data, data.clone(), Compression::None);
    }
}
