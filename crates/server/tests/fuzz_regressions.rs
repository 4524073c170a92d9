//! Inputs the fuzz targets of `fuzz/` (`cargo xtask fuzz`) found to crash, each run through
//! the same function the target calls: every one must now be refused with a clean error.

use inference_server::image_input::{self, ChannelOrder, ImageError, ImagePreprocess, Layout};

/// The image target's pixel budget.
const MAX_PIXELS: u64 = 4_000_000;

fn classifier() -> ImagePreprocess {
    ImagePreprocess {
        resize: 20,
        crop: 16,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        channels: ChannelOrder::Rgb,
        layout: Layout::Nchw,
    }
}

/// A progressive JPEG (SOF2, 4x12336) with four components, the first three sampled 1x1
/// and the fourth 2x2; zune-jpeg 0.5.15 sized its upsampling buffer by the first component
/// and panicked (`assertion failed: input.len() * 2 <= scratch_space.len()`).
const JPEG_PROGRESSIVE_FOURTH_COMPONENT_DENSEST: &[u8] = &[
    0xff, 0xd8, 0xff, 0x30, 0x00, 0x0e, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x30, 0x30, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30,
    0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0xff, 0xc2, 0x00, 0x14, 0x08, 0x30, 0x30, 0x00, 0x04,
    0x04, 0x43, 0x11, 0x00, 0x4d, 0x11, 0x00, 0x59, 0x11, 0x00, 0x30, 0x22, 0x00, 0xff, 0xda, 0x00,
    0x0e, 0x04, 0x43, 0x30, 0x4d, 0x30, 0x59, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0xff, 0xd9,
];

/// The rows of a 6x6 picture of 4-bit palette indices (0 to 7), deflated, from a PNG that
/// Pillow wrote.
const IDAT_6X6_INDEXED: &[u8] = &[
    0x78, 0x9c, 0x63, 0x2c, 0xff, 0xf7, 0x80, 0x89, 0xe1, 0x3c, 0x03, 0xa3, 0xb2, 0xc0, 0x5f, 0x06,
    0x25, 0x01, 0x06, 0x26, 0x06, 0x06, 0x06, 0x96, 0x90, 0x0f, 0xef, 0x01, 0x57, 0xa2, 0x06, 0xc4,
];

/// A 6x6 indexed-color PNG (4 bits per pixel) with `palette` as its PLTE chunk.
fn indexed_png(palette: &[u8]) -> Vec<u8> {
    // Width, height, bit depth 4, color type 3 (indexed), deflate, adaptive filters, no interlace.
    let ihdr = [0, 0, 0, 6, 0, 0, 0, 6, 4, 3, 0, 0, 0];
    let chunks: [(&[u8; 4], &[u8]); 4] = [
        (b"IHDR", &ihdr),
        (b"PLTE", palette),
        (b"IDAT", IDAT_6X6_INDEXED),
        (b"IEND", &[]),
    ];
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in chunks {
        let length = u32::try_from(data.len()).unwrap();
        file.extend_from_slice(&length.to_be_bytes());
        let start = file.len();
        file.extend_from_slice(kind);
        file.extend_from_slice(data);
        let crc = crc32(&file[start..]);
        file.extend_from_slice(&crc.to_be_bytes());
    }
    file
}

/// The CRC-32 a PNG chunk ends with, over its type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
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

/// A palette of 50 bytes, 16 entries and two bytes of a seventeenth: png 0.18.1 indexed
/// past its end and panicked (`range end index 3 out of range for slice of length 2`).
#[test]
fn a_png_palette_of_a_partial_entry_is_refused_as_corrupt() {
    let png = indexed_png(&[0x30; 50]);
    let error = image_input::preprocess(&png, &classifier(), MAX_PIXELS).unwrap_err();
    assert!(
        matches!(&error, ImageError::Corrupt(reason) if reason.contains("palette")),
        "{error:?}"
    );
}

#[test]
fn a_progressive_jpeg_with_a_component_denser_than_the_first_is_refused() {
    let error = image_input::preprocess(
        JPEG_PROGRESSIVE_FOURTH_COMPONENT_DENSEST,
        &classifier(),
        MAX_PIXELS,
    )
    .unwrap_err();
    assert!(
        matches!(&error, ImageError::UnsupportedFormat(what) if what.contains("progressive")),
        "{error:?}"
    );
}

#[test]
fn a_well_formed_palette_png_still_decodes() {
    let png = indexed_png(&[0x30; 24]);
    let values = image_input::preprocess(&png, &classifier(), MAX_PIXELS).unwrap();
    assert_eq!(values.len(), 3 * 16 * 16);
}
