//! Thumbnails from an original's bytes, with no I/O: the format read from the bytes, the pixel
//! count checked in the header before anything is decoded, JPEGs decoded at a reduced scale
//! (as Pillow's `draft` does), the EXIF orientation applied, transparency flattened on white,
//! and each size resized with a bicubic filter (Pillow's `thumbnail` default) and encoded as JPEG.
//!
//! A damaged file is corrupt even where a decoder would fill the gap: JPEG and PNG files are
//! walked segment by segment (chunk by chunk) to their end marker before decoding, and a WebP
//! file must hold all the bytes its RIFF header announces.

use std::io::Cursor;
use std::sync::{Mutex, PoisonError};

use fast_image_resize::images::{Image as ResizeImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage};
use thiserror::Error;

/// JPEG quality of the thumbnails.
pub(crate) const QUALITY: u8 = 85;

/// Pillow's `reducing_gap` for `thumbnail`: a JPEG is decoded at the smallest DCT scale that
/// keeps at least twice the largest thumbnail's size, and the rest is resampled.
const REDUCING_GAP: u32 = 2;

/// Decode buffers kept between photos (one per CPU at most): a 12 MP JPEG at half scale fills
/// 9 MB, which a fresh allocation would fault in and zero, and the decoder then overwrites.
static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of `len` bytes, reused when one is kept (its contents are whatever the last photo
/// left; the decoder overwrites every byte).
fn take_buffer(len: usize) -> Vec<u8> {
    let kept = BUFFERS.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut buf = kept.unwrap_or_default();
    buf.resize(len, 0);
    buf
}

/// Keeps `buf` for the next photo, unless one per CPU is kept already.
fn keep_buffer(buf: Vec<u8>) {
    let cap = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut kept = BUFFERS.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.len() < cap {
        kept.push(buf);
    }
}

/// The formats the task reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Jpeg,
    Png,
    WebP,
}

/// Why an original gives no thumbnails.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum PictureError {
    /// The bytes are none of the formats read.
    #[error("is not a JPEG, PNG or WebP image")]
    NotAnImage,
    /// Truncated or damaged.
    #[error("is corrupt: {0}")]
    Corrupt(String),
    /// The header promises more pixels than allowed; nothing was decoded.
    #[error("has {pixels} pixels ({width}x{height}), more than the limit of {limit}")]
    TooLarge {
        pixels: u64,
        width: u32,
        height: u32,
        limit: u64,
    },
}

/// One thumbnail.
#[derive(Debug, Clone)]
pub(crate) struct Thumb {
    pub size: u32,
    pub width: u32,
    pub height: u32,
    pub jpeg: Vec<u8>,
}

/// What an original gives.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    /// Of the original, after its EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// One per size, in the order asked.
    pub thumbs: Vec<Thumb>,
}

/// The format of `bytes`, from their first bytes.
pub(crate) fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(Format::WebP)
    } else {
        None
    }
}

/// The size of a `width` × `height` image made to fit in a `size` × `size` box, as Pillow's
/// `Image.thumbnail` computes it: the aspect ratio kept, rounded down or up to whichever is
/// closer to it, never upscaled, never zero.
pub(crate) fn fit(width: u32, height: u32, size: u32) -> (u32, u32) {
    if size >= width && size >= height {
        return (width, height);
    }
    let aspect = f64::from(width) / f64::from(height);
    let s = f64::from(size);
    // Pillow: max(min(floor(n), ceil(n), key=...), 1); on a tie, min keeps the first (floor).
    let round = |n: f64, error: &dyn Fn(f64) -> f64| -> u32 {
        let (lo, hi) = (n.floor(), n.ceil());
        let pick = if error(hi) < error(lo) { hi } else { lo };
        // Bounded by `size`, so the cast cannot overflow.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let v = pick.max(1.0) as u32;
        v
    };
    if 1.0 >= aspect {
        // x / y >= aspect with a square box: the height is the box, the width follows.
        let w = round(s * aspect, &|n| (aspect - n / s).abs());
        (w, size)
    } else {
        let h = round(s / aspect, &|n| {
            if n == 0.0 {
                0.0
            } else {
                (aspect - s / n).abs()
            }
        });
        (size, h)
    }
}

/// Makes the thumbnails of `bytes` for `sizes` (each at least 1), refusing an image of more
/// than `max_pixels` before decoding it.
pub(crate) fn render(
    bytes: &[u8],
    sizes: &[u32],
    max_pixels: u64,
) -> Result<Rendered, PictureError> {
    let format = sniff(bytes).ok_or(PictureError::NotAnImage)?;
    match format {
        Format::Jpeg => check_jpeg_structure(bytes)?,
        Format::Png => check_png_structure(bytes)?,
        Format::WebP => check_webp_structure(bytes)?,
    }
    let decoded = match format {
        Format::Jpeg => decode_jpeg(bytes, sizes, max_pixels)?,
        Format::Png | Format::WebP => decode_other(bytes, format, max_pixels)?,
    };
    let Decoded {
        image,
        full_width,
        full_height,
        orientation,
    } = decoded;
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (width, height) = if turned {
        (full_height, full_width)
    } else {
        (full_width, full_height)
    };
    let mut resizer = Resizer::new();
    // Largest first: a smaller size is resized from a larger thumbnail when that one still has
    // twice its size (Pillow's reducing gap), which costs a fraction of a pass over the decode.
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut made: Vec<Option<Thumb>> = vec![None; sizes.len()];
    let mut larger: Option<RgbImage> = None;
    for i in order {
        let size = sizes[i];
        let (tw, th) = fit(width, height, size);
        // Resize the stored (unturned) pixels to the turned target, then turn the small image.
        let (sw, sh) = if turned { (th, tw) } else { (tw, th) };
        let from = match &larger {
            Some(l)
                if l.width() >= sw.saturating_mul(REDUCING_GAP)
                    && l.height() >= sh.saturating_mul(REDUCING_GAP) =>
            {
                l
            }
            _ => &image,
        };
        let small = resize(&mut resizer, from, sw, sh)?;
        let mut turned_small = DynamicImage::ImageRgb8(small.clone());
        turned_small.apply_orientation(orientation);
        let turned_small = turned_small.into_rgb8();
        let jpeg = encode_jpeg(&turned_small)?;
        made[i] = Some(Thumb {
            size,
            width: turned_small.width(),
            height: turned_small.height(),
            jpeg,
        });
        larger = Some(small);
    }
    keep_buffer(image.into_raw());
    let thumbs = made.into_iter().flatten().collect();
    Ok(Rendered {
        width,
        height,
        thumbs,
    })
}

/// Pixels as stored (before orientation), possibly at a reduced scale, in RGB.
struct Decoded {
    image: RgbImage,
    /// The original's full size, as stored.
    full_width: u32,
    full_height: u32,
    orientation: Orientation,
}

fn check_pixels(width: u32, height: u32, limit: u64) -> Result<(), PictureError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limit {
        return Err(PictureError::TooLarge {
            pixels,
            width,
            height,
            limit,
        });
    }
    if pixels == 0 {
        return Err(PictureError::Corrupt("it has no pixels".into()));
    }
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> PictureError {
    PictureError::Corrupt(e.to_string())
}

fn decode_jpeg(bytes: &[u8], sizes: &[u32], max_pixels: u64) -> Result<Decoded, PictureError> {
    let mut decoder = turbojpeg::Decompressor::new().map_err(corrupt)?;
    let header = decoder.read_header(bytes).map_err(corrupt)?;
    let full_width = u32::try_from(header.width).map_err(corrupt)?;
    let full_height = u32::try_from(header.height).map_err(corrupt)?;
    check_pixels(full_width, full_height, max_pixels)?;
    // As Pillow's `draft`: the smallest DCT scale whose size is still at least the largest
    // thumbnail times the reducing gap in both directions (the box is square, so orientation
    // does not matter here).
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let (tw, th) = fit(full_width, full_height, largest);
    let (want_w, want_h) = (
        usize::try_from(tw.saturating_mul(REDUCING_GAP)).unwrap_or(usize::MAX),
        usize::try_from(th.saturating_mul(REDUCING_GAP)).unwrap_or(usize::MAX),
    );
    let scale = [8, 4, 2]
        .into_iter()
        .map(|d| turbojpeg::ScalingFactor::new(1, d))
        .find(|f| f.scale(header.width) >= want_w && f.scale(header.height) >= want_h)
        .unwrap_or(turbojpeg::ScalingFactor::ONE);
    decoder.set_scaling_factor(scale).map_err(corrupt)?;
    // The chroma is resampled again for every thumbnail: libjpeg's smooth upsampling would
    // buy nothing visible at these sizes.
    decoder.set_fast_upsample(true).map_err(corrupt)?;
    // A progressive file may hold many scans; more than this is an attack, not a photo.
    decoder.set_scan_limit(500).map_err(corrupt)?;
    let scaled = header.scaled(scale);
    let cmyk = matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    );
    let format = if cmyk {
        turbojpeg::PixelFormat::CMYK
    } else {
        turbojpeg::PixelFormat::RGB
    };
    let pitch = scaled.width * format.size();
    let mut pixels = take_buffer(pitch * scaled.height);
    decoder
        .decompress(
            bytes,
            turbojpeg::Image {
                pixels: pixels.as_mut_slice(),
                width: scaled.width,
                pitch,
                height: scaled.height,
                format,
            },
        )
        .map_err(corrupt)?;
    if cmyk {
        // Adobe's CMYK JPEGs hold inverted values, as libjpeg returns them: R = C × K / 255.
        let cmyk = std::mem::take(&mut pixels);
        pixels = cmyk
            .chunks_exact(4)
            .flat_map(|p| {
                let k = u16::from(p[3]);
                let ch = |c: u8| u8::try_from(u16::from(c) * k / 255).unwrap_or(u8::MAX);
                [ch(p[0]), ch(p[1]), ch(p[2])]
            })
            .collect();
    }
    let (w, h) = (
        u32::try_from(scaled.width).map_err(corrupt)?,
        u32::try_from(scaled.height).map_err(corrupt)?,
    );
    let image = RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| corrupt("the decoder returned fewer pixels than the frame holds"))?;
    let orientation = jpeg_exif(bytes)
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(Decoded {
        image,
        full_width,
        full_height,
        orientation,
    })
}

/// The TIFF data of a JPEG's EXIF segment (APP1 starting `Exif\0\0`), from the header segments
/// before the first scan. The structure was checked by [`check_jpeg_structure`].
fn jpeg_exif(b: &[u8]) -> Option<&[u8]> {
    let mut i = 2;
    loop {
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let code = *b.get(i)?;
        i += 1;
        if matches!(code, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        if matches!(code, 0xD9 | 0xDA) {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
        let body = b.get(i + 2..i + len)?;
        if code == 0xE1
            && let Some(tiff) = body.strip_prefix(b"Exif\0\0")
        {
            return Some(tiff);
        }
        i += len;
    }
}

fn decode_other(bytes: &[u8], format: Format, max_pixels: u64) -> Result<Decoded, PictureError> {
    let format = match format {
        Format::Png => ImageFormat::Png,
        _ => ImageFormat::WebP,
    };
    // No limits while the header is read: a limit would refuse a huge image as "limits
    // exceeded" before its size could be reported. The size is checked, then the limits set.
    let (w, h) = header_size(bytes, format).ok_or_else(|| corrupt("no image header"))?;
    check_pixels(w, h, max_pixels)?;
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(image::Limits::no_limits());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (full_width, full_height) = decoder.dimensions();
    check_pixels(full_width, full_height, max_pixels)?;
    let mut limits = image::Limits::default();
    // Room for the largest allowed image at 16 bits a channel with alpha.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(1 << 20));
    decoder.set_limits(limits).map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let image = if decoded.color().has_alpha() {
        flatten_on_white(&decoded)
    } else {
        decoded.into_rgb8()
    };
    Ok(Decoded {
        image,
        full_width,
        full_height,
        orientation,
    })
}

/// The size a PNG's IHDR or a WebP's first chunk gives, read before any decoder runs.
fn header_size(b: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let be = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let le24 = |i: usize| {
        b.get(i..i + 3)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], 0]) + 1)
    };
    match format {
        // The first chunk is IHDR: width and height, big-endian.
        ImageFormat::Png => (b.get(12..16)? == b"IHDR").then_some((be(16)?, be(20)?)),
        _ => match b.get(12..16)? {
            // Lossy: a 3-byte frame tag, the start code, then 14-bit width and height.
            b"VP8 " => {
                let f = b.get(20..30)?;
                (f[3..6] == [0x9d, 0x01, 0x2a]).then_some((
                    u32::from(u16::from_le_bytes([f[6], f[7]]) & 0x3fff),
                    u32::from(u16::from_le_bytes([f[8], f[9]]) & 0x3fff),
                ))
            }
            // Lossless: a signature byte, then 14 bits of width - 1 and of height - 1.
            b"VP8L" => {
                let f = b.get(20..25)?;
                if f[0] != 0x2f {
                    return None;
                }
                let bits = u32::from_le_bytes([f[1], f[2], f[3], f[4]]);
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            // Extended: flags, then 24 bits of canvas width - 1 and of height - 1.
            b"VP8X" => Some((le24(24)?, le24(27)?)),
            _ => None,
        },
    }
}

/// Composites an image with alpha over white.
fn flatten_on_white(image: &DynamicImage) -> RgbImage {
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(rgba.as_raw().len() / 4 * 3);
    for p in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(p[3]);
        for &c in &p[..3] {
            let v = (u32::from(c) * a + 255 * (255 - a) + 127) / 255;
            out.push(u8::try_from(v).unwrap_or(u8::MAX));
        }
    }
    // The buffer has exactly w × h × 3 bytes.
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

fn resize(
    resizer: &mut Resizer,
    image: &RgbImage,
    width: u32,
    height: u32,
) -> Result<RgbImage, PictureError> {
    let width = width.max(1);
    let height = height.max(1);
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    let src = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .map_err(corrupt)?;
    let mut dst = ResizeImage::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    resizer.resize(&src, &mut dst, &options).map_err(corrupt)?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| corrupt("the resizer returned the wrong number of pixels"))
}

fn encode_jpeg(image: &RgbImage) -> Result<Vec<u8>, PictureError> {
    let (w, h) = image.dimensions();
    let (w, h) = (
        u16::try_from(w).map_err(corrupt)?,
        u16::try_from(h).map_err(corrupt)?,
    );
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, QUALITY)
        .encode(image.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| PictureError::Corrupt(format!("cannot encode the thumbnail: {e}")))?;
    Ok(out)
}

const TRUNCATED: &str = "the file is truncated";

/// Walks a JPEG's segments to its end-of-image marker: header segments by their lengths, the
/// entropy-coded data after each start-of-scan up to the next marker.
fn check_jpeg_structure(b: &[u8]) -> Result<(), PictureError> {
    let mut i = 2; // after SOI
    loop {
        // A marker: 0xFF (any number of fill bytes), then its code.
        if b.get(i) != Some(&0xFF) {
            return Err(if i >= b.len() {
                corrupt(TRUNCATED)
            } else {
                corrupt(format!("no marker at byte {i}"))
            });
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = b.get(i) else {
            return Err(corrupt(TRUNCATED));
        };
        i += 1;
        match code {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => return Err(corrupt(format!("no marker at byte {}", i - 2))),
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (b.get(i), b.get(i + 1)) else {
            return Err(corrupt(TRUNCATED));
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len < 2 {
            return Err(corrupt(format!("a segment of length {len} at byte {i}")));
        }
        i += len;
        if i > b.len() {
            return Err(corrupt(TRUNCATED));
        }
        if code == 0xDA {
            // Entropy-coded data: 0xFF 0x00 is a stuffed byte, 0xFF 0xD0..0xD7 a restart marker,
            // 0xFF 0xFF fill; any other 0xFF xx is the next marker.
            loop {
                let Some(rel) = b.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
                    return Err(corrupt(TRUNCATED));
                };
                i += rel;
                match b.get(i + 1) {
                    None => return Err(corrupt(TRUNCATED)),
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Walks a PNG's chunks (length, type, data, CRC) to its IEND chunk.
fn check_png_structure(b: &[u8]) -> Result<(), PictureError> {
    let mut i = 8;
    loop {
        let Some(head) = b.get(i..i + 8) else {
            return Err(corrupt(TRUNCATED));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = usize::try_from(len).map_err(corrupt)?;
        let end = i
            .checked_add(12)
            .and_then(|n| n.checked_add(len))
            .ok_or_else(|| corrupt(TRUNCATED))?;
        if end > b.len() {
            return Err(corrupt(TRUNCATED));
        }
        if &head[4..8] == b"IEND" {
            return Ok(());
        }
        i = end;
    }
}

/// A WebP file must hold the bytes its RIFF header announces.
fn check_webp_structure(b: &[u8]) -> Result<(), PictureError> {
    let size = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let want = usize::try_from(size).map_err(corrupt)?.saturating_add(8);
    if b.len() < want {
        return Err(corrupt(TRUNCATED));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
