use super::*;

fn jpeg(width: u16, height: u16, exif_orientation: Option<u16>) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(usize::from(width) * usize::from(height) * 3);
    for y in 0..height {
        for x in 0..width {
            // Left half red, right half blue, so an orientation shows in the output.
            let left = u32::from(x) * 2 < u32::from(width);
            let shade = u8::try_from(u32::from(y) * 200 / u32::from(height)).unwrap_or(0);
            let px = if left {
                [250, shade, 10]
            } else {
                [10, shade, 250]
            };
            pixels.extend_from_slice(&px);
        }
    }
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    if let Some(o) = exif_orientation {
        // A little-endian TIFF header with one IFD entry: Orientation (0x0112), SHORT, 1.
        let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&o.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        enc.add_app_segment(1, exif).expect("exif segment");
    }
    enc.encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
        .expect("encoded");
    out
}

fn png_rgba(width: u32, height: u32, pixel: [u8; 4]) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(width, height, image::Rgba(pixel));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).expect("png");
    out.into_inner()
}

fn decode(jpeg: &[u8]) -> (u32, u32, Vec<u8>) {
    let image = turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::RGB).expect("a JPEG thumbnail");
    let (w, h) = (image.width, image.height);
    assert_eq!(image.pitch, w * 3);
    (
        u32::try_from(w).expect("width"),
        u32::try_from(h).expect("height"),
        image.pixels,
    )
}

#[test]
fn sizes_fit_the_box_as_pillow_rounds_them() {
    assert_eq!(fit(4000, 3000, 128), (128, 96));
    assert_eq!(fit(3000, 4000, 512), (384, 512));
    assert_eq!(fit(100, 80, 128), (100, 80));
    assert_eq!(fit(128, 10, 128), (128, 10));
    assert_eq!(fit(1000, 3, 128), (128, 1));
    // 128 / 1.001 = 127.87: 128 keeps the aspect better than 127.
    assert_eq!(fit(1001, 1000, 128), (128, 128));
    // 200 × 300 into 128: 85.33 → 85.
    assert_eq!(fit(200, 300, 128), (85, 128));
    assert_eq!(fit(333, 500, 100), (67, 100));
}

#[test]
fn a_jpeg_gives_each_size_and_keeps_its_colours() {
    let r = render(&jpeg(2000, 1000, None), &[128, 512], 50_000_000).expect("rendered");
    assert_eq!((r.width, r.height), (2000, 1000));
    let dims: Vec<_> = r
        .thumbs
        .iter()
        .map(|t| (t.size, t.width, t.height))
        .collect();
    assert_eq!(dims, vec![(128, 128, 64), (512, 512, 256)]);
    let (w, h, px) = decode(&r.thumbs[0].jpeg);
    assert_eq!((w, h), (128, 64));
    let at = |x: u32, y: u32| {
        let i = usize::try_from((y * w + x) * 3).expect("index");
        [px[i], px[i + 1], px[i + 2]]
    };
    assert!(
        at(5, 32)[0] > 200 && at(5, 32)[2] < 60,
        "left is red: {:?}",
        at(5, 32)
    );
    assert!(at(120, 32)[2] > 200, "right is blue: {:?}", at(120, 32));
}

#[test]
fn the_exif_orientation_is_applied() {
    // Orientation 6: the stored image is turned 90° clockwise for display.
    let r = render(&jpeg(300, 200, Some(6)), &[128], 50_000_000).expect("rendered");
    assert_eq!((r.width, r.height), (200, 300));
    let t = &r.thumbs[0];
    assert_eq!((t.width, t.height), (85, 128));
    let (w, h, px) = decode(&t.jpeg);
    assert_eq!((w, h), (85, 128));
    // The stored left half (red) is the displayed top half.
    let at = |x: u32, y: u32| {
        let i = usize::try_from((y * w + x) * 3).expect("index");
        [px[i], px[i + 1], px[i + 2]]
    };
    assert!(at(42, 10)[0] > 200, "top is red: {:?}", at(42, 10));
    assert!(at(42, 118)[2] > 200, "bottom is blue: {:?}", at(42, 118));
}

#[test]
fn small_originals_are_not_upscaled() {
    let r = render(&jpeg(100, 80, None), &[128, 512], 50_000_000).expect("rendered");
    for t in &r.thumbs {
        assert_eq!((t.width, t.height), (100, 80));
    }
}

#[test]
fn transparency_is_flattened_on_white() {
    let clear = png_rgba(40, 30, [0, 0, 0, 0]);
    let r = render(&clear, &[16], 50_000_000).expect("rendered");
    assert_eq!((r.width, r.height), (40, 30));
    let (w, h, px) = decode(&r.thumbs[0].jpeg);
    assert_eq!((w, h), (16, 12));
    assert!(px.iter().all(|&v| v > 245), "white, not black");
    let half = png_rgba(8, 8, [0, 0, 0, 128]);
    let (_, _, px) = decode(&render(&half, &[8], 50_000_000).expect("rendered").thumbs[0].jpeg);
    assert!(
        px.iter().all(|&v| (118..=136).contains(&v)),
        "half black on white is grey"
    );
}

#[test]
fn webp_and_png_originals_are_read_from_their_bytes() {
    let img = image::RgbImage::from_pixel(64, 32, image::Rgb([0, 200, 0]));
    let mut webp = Cursor::new(Vec::new());
    img.write_to(&mut webp, ImageFormat::WebP).expect("webp");
    let webp = webp.into_inner();
    assert_eq!(sniff(&webp), Some(Format::WebP));
    let r = render(&webp, &[32], 50_000_000).expect("rendered");
    assert_eq!((r.thumbs[0].width, r.thumbs[0].height), (32, 16));
    let png = png_rgba(64, 32, [0, 0, 200, 255]);
    assert_eq!(sniff(&png), Some(Format::Png));
    let (_, _, px) = decode(&render(&png, &[32], 50_000_000).expect("rendered").thumbs[0].jpeg);
    assert!(px.chunks(3).all(|p| p[2] > 180 && p[0] < 40));
}

#[test]
fn what_is_not_an_image_says_so() {
    assert!(matches!(
        render(b"hello, this is text", &[128], 100),
        Err(PictureError::NotAnImage)
    ));
    assert!(matches!(
        render(b"GIF89a....", &[128], 100),
        Err(PictureError::NotAnImage)
    ));
    assert!(matches!(
        render(&[], &[128], 100),
        Err(PictureError::NotAnImage)
    ));
}

#[test]
fn truncated_files_are_corrupt() {
    let full = jpeg(640, 480, None);
    for cut in [full.len() / 2, full.len() - 2, 300, 4] {
        let err = render(&full[..cut], &[128], 50_000_000).expect_err("truncated");
        assert!(
            matches!(err, PictureError::Corrupt(_)),
            "cut at {cut}: {err}"
        );
    }
    // Bytes after the end marker are allowed, as in files from many cameras.
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 100]);
    assert!(render(&padded, &[128], 50_000_000).is_ok());

    let png = png_rgba(64, 64, [1, 2, 3, 255]);
    for cut in [png.len() - 12, png.len() / 2, 20] {
        assert!(matches!(
            render(&png[..cut], &[16], 50_000_000),
            Err(PictureError::Corrupt(_))
        ));
    }
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 9]));
    let mut webp = Cursor::new(Vec::new());
    img.write_to(&mut webp, ImageFormat::WebP).expect("webp");
    let webp = webp.into_inner();
    assert!(matches!(
        render(&webp[..webp.len() - 3], &[16], 50_000_000),
        Err(PictureError::Corrupt(_))
    ));
}

#[test]
fn damaged_data_is_corrupt() {
    let mut bad = jpeg(64, 64, None);
    // Garbage in place of the header segments.
    for b in bad.iter_mut().skip(4).take(200) {
        *b = 0x5A;
    }
    assert!(matches!(
        render(&bad, &[16], 50_000_000),
        Err(PictureError::Corrupt(_))
    ));
}

#[test]
fn the_pixel_limit_refuses_more_than_the_limit_before_decoding() {
    let png = png_rgba(100, 100, [0, 0, 0, 255]);
    assert!(render(&png, &[16], 10_000).is_ok());
    assert_eq!(
        render(&png, &[16], 9_999).expect_err("over").to_string(),
        "has 10000 pixels (100x100), more than the limit of 9999"
    );
    let j = jpeg(100, 100, None);
    assert!(render(&j, &[16], 10_000).is_ok());
    assert!(matches!(
        render(&j, &[16], 9_999),
        Err(PictureError::TooLarge { .. })
    ));
    // A header that claims 60000 × 60000 with almost no data behind it: refused, not decoded.
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bomb.extend_from_slice(&60_000u32.to_be_bytes());
    bomb.extend_from_slice(&60_000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 6, 0, 0, 0]);
    bomb.extend_from_slice(&crc32(&bomb[12..]).to_be_bytes());
    bomb.extend_from_slice(b"\0\0\0\0IEND\xaeB`\x82");
    assert!(matches!(
        render(&bomb, &[16], 50_000_000),
        Err(PictureError::TooLarge {
            pixels: 3_600_000_000,
            ..
        })
    ));
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
