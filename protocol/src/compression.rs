//! The `compression` header: Kombu compresses the serialized body and names the scheme there.
//!
//! Kombu registers zlib under the MIME type `application/x-gzip` (aliases `zlib` and `gzip`):
//! the body is a zlib stream even though the name says gzip. We also accept real gzip framing
//! under that name, since other producers write it, bzip2 (`application/x-bz2`) and lzma
//! (`application/x-lzma`, an `.xz` container as Python's `lzma.compress` writes): the schemes
//! Kombu 5.7 supports without extra packages.
//! Decompression stops at [`MAX_DECOMPRESSED`] so a small hostile body cannot exhaust memory.

use std::io::Write;

use crate::error::{DecodeError, EncodeError};

/// Largest body we are willing to inflate to.
pub const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

/// Compression schemes this crate can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Kombu's `zlib`/`gzip` (header `application/x-gzip`).
    Zlib,
    /// Kombu's `bzip2` (header `application/x-bz2`).
    Bzip2,
    /// Kombu's `lzma`/`xz` (header `application/x-lzma`).
    Xz,
}

impl Compression {
    /// Recognises a `compression` header value.
    pub fn from_header(value: &str) -> Result<Self, DecodeError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "application/x-gzip" | "application/gzip" | "gzip" | "zlib" => Ok(Self::Zlib),
            "application/x-bz2" | "bzip2" | "bzip" => Ok(Self::Bzip2),
            "application/x-lzma" | "lzma" | "xz" => Ok(Self::Xz),
            _ => Err(DecodeError::Compression(value.to_owned())),
        }
    }

    /// The header value Kombu writes for this scheme.
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Zlib => "application/x-gzip",
            Self::Bzip2 => "application/x-bz2",
            Self::Xz => "application/x-lzma",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Zlib => "zlib",
            Self::Bzip2 => "bzip2",
            Self::Xz => "lzma",
        }
    }

    /// Inflates a body, accepting gzip framing where zlib is expected.
    pub fn decompress(self, data: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let fail = |reason: String| DecodeError::Decompress {
            scheme: self.name(),
            reason,
        };
        let mut out = LimitedWriter(Vec::new());
        match self {
            Self::Zlib if data.starts_with(&[0x1f, 0x8b]) => {
                std::io::copy(&mut flate2::read::GzDecoder::new(data), &mut out).map(drop)
            }
            Self::Zlib => {
                std::io::copy(&mut flate2::read::ZlibDecoder::new(data), &mut out).map(drop)
            }
            Self::Bzip2 => {
                std::io::copy(&mut bzip2::read::BzDecoder::new(data), &mut out).map(drop)
            }
            Self::Xz => lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out)
                .map_err(|e| std::io::Error::other(e.to_string())),
        }
        .map_err(|e| fail(e.to_string()))?;
        Ok(out.0)
    }

    /// Compresses a body the way Kombu does (zlib stream, not gzip framing).
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, EncodeError> {
        match self {
            Self::Zlib => {
                let mut enc =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(data)?;
                Ok(enc.finish()?)
            }
            Self::Bzip2 => {
                let mut enc =
                    bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                enc.write_all(data)?;
                Ok(enc.finish()?)
            }
            Self::Xz => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut std::io::BufReader::new(data), &mut out)?;
                Ok(out)
            }
        }
    }
}

/// A `Vec` writer that refuses to grow past [`MAX_DECOMPRESSED`].
struct LimitedWriter(Vec<u8>);

impl Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() as u64 + buf.len() as u64 > MAX_DECOMPRESSED {
            return Err(std::io::Error::other(format!(
                "larger than {MAX_DECOMPRESSED} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_header_also_accepts_gzip_framing() {
        let data = b"[[1, 1], {}, {}]";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Compression::Zlib.decompress(&gz).unwrap(), data);
        let z = Compression::Zlib.compress(data).unwrap();
        assert_eq!(z[0], 0x78, "Kombu's zlib writes a zlib stream");
        assert_eq!(Compression::Zlib.decompress(&z).unwrap(), data);
    }

    #[test]
    fn bzip2_round_trips() {
        let data = b"hello hello hello";
        let c = Compression::Bzip2.compress(data).unwrap();
        assert_eq!(Compression::Bzip2.decompress(&c).unwrap(), data);
    }

    #[test]
    fn xz_round_trips_and_reads_pythons_lzma() {
        let data = b"[[1, 1], {}, {}]";
        let c = Compression::Xz.compress(data).unwrap();
        assert_eq!(&c[..6], &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
        assert_eq!(Compression::Xz.decompress(&c).unwrap(), data);
        assert!(Compression::Xz.decompress(b"not xz").is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; (MAX_DECOMPRESSED + 10) as usize];
        let c = Compression::Zlib.compress(&zeros).unwrap();
        assert!(c.len() < 200_000);
        assert!(matches!(
            Compression::Zlib.decompress(&c),
            Err(DecodeError::Decompress { .. })
        ));
    }

    #[test]
    fn unknown_scheme_is_named_in_the_error() {
        let e = Compression::from_header("application/x-snappy").unwrap_err();
        assert!(e.to_string().contains("x-snappy"));
    }
}
