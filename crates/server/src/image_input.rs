//! Image inputs for vision models: PNG or JPEG bytes (optionally base64) become the normalized
//! f32 tensor that torchvision's `Resize(n)`, `CenterCrop(c)`, `ToTensor()` and
//! `Normalize(mean, std)` make of a Pillow image, and classifier logits become top-k classes.
//!
//! Parity with that Python pipeline is the point: a model trained behind those transforms must
//! see the same numbers here. The known differences are listed on [`preprocess`].

use base64::Engine as _;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, Limits, RgbImage};
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

/// Largest `resize` and `crop` a configuration may ask for. It bounds the work and the tensor
/// of one image (3 x 8192 x 8192 f32 is 768 MiB), far beyond what any vision model takes.
pub const MAX_SIDE: u32 = 8192;

/// Bytes per pixel of the widest buffer the PNG and JPEG decoders produce (RGBA, 16 bits).
const MAX_DECODED_BYTES_PER_PIXEL: u64 = 8;

/// What a decoder may allocate beyond the decoded pixels: row buffers, the inflate window,
/// metadata chunks.
const DECODER_OVERHEAD_BYTES: u64 = 64 << 20;

/// How an image input is turned into a tensor: the `[preprocess]` table of a model's
/// `model.toml`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocess {
    /// Resize so the shorter side has this many pixels (aspect ratio kept), like torchvision's Resize(int).
    pub resize: u32,
    /// Center crop to crop x crop.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// "rgb" or "bgr"
    #[serde(default = "rgb")]
    pub channels: ChannelOrder,
    /// "nchw" or "nhwc" (per sample: CHW or HWC)
    #[serde(default = "nchw")]
    pub layout: Layout,
}

/// The order of the color channels in the tensor. `mean` and `std` are always given in RGB
/// order, as torchvision's `Normalize` sees them; `Bgr` reorders after normalizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// The memory layout of one sample: channels first (CHW) or channels last (HWC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

fn rgb() -> ChannelOrder {
    ChannelOrder::Rgb
}

fn nchw() -> Layout {
    Layout::Nchw
}

impl ImagePreprocess {
    /// Checks the configuration once, when the model is loaded, so that a bad `model.toml`
    /// fails at startup rather than on the first request.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [("resize", self.resize), ("crop", self.crop)] {
            if value == 0 || value > MAX_SIDE {
                return Err(format!(
                    "preprocess.{name} must be between 1 and {MAX_SIDE}, got {value}"
                ));
            }
        }
        if let Some(mean) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("preprocess.mean must be finite, got {mean}"));
        }
        if let Some(std) = self.std.iter().find(|s| !s.is_finite() || **s == 0.0) {
            return Err(format!(
                "preprocess.std must be finite and non-zero, got {std}"
            ));
        }
        Ok(())
    }

    /// The shape of one sample: `[3, crop, crop]` for NCHW, `[crop, crop, 3]` for NHWC.
    pub fn sample_shape(&self) -> [usize; 3] {
        let crop = self.crop as usize;
        match self.layout {
            Layout::Nchw => [3, crop, crop],
            Layout::Nhwc => [crop, crop, 3],
        }
    }
}

/// Why an image input was refused; the message tells the client what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the data is not an image: send the bytes of a PNG or JPEG file")]
    NotAnImage,
    #[error("unsupported image format {0}: send a PNG or JPEG image")]
    UnsupportedFormat(String),
    #[error(
        "the image is {width}x{height} pixels, more than the {max_pixels} pixels allowed: \
         downscale it and send it again"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("the image is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("the image is not valid base64: {0}")]
    Base64(String),
    #[error("invalid image preprocessing configuration: {0}")]
    InvalidSpec(String),
}

/// Decodes a PNG or JPEG image and returns the tensor torchvision's
/// `Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])` makes of
/// `Image.open(...).convert("RGB")`, as row-major f32 of length `3 * crop * crop`.
///
/// The dimensions in the file header are checked against `max_pixels` before anything is
/// decoded, so a small file that declares a huge image costs nothing.
///
/// Differences from Pillow that remain:
/// - JPEG is decoded by zune-jpeg, not libjpeg-turbo; both follow the standard but their
///   IDCT and chroma upsampling round differently, so pixels may differ by a few levels.
/// - 16-bit PNGs are scaled to 8 bits with rounding (`v * 255 / 65535`). Pillow keeps the
///   high byte of 16-bit RGB(A) (a difference of at most one level) and clamps 16-bit
///   grayscale to 255, which turns most such images white; scaling keeps the image.
/// - EXIF orientation is ignored, as `Image.open` ignores it.
pub fn preprocess(
    bytes: &[u8],
    spec: &ImagePreprocess,
    max_pixels: u64,
) -> Result<Vec<f32>, ImageError> {
    spec.validate().map_err(ImageError::InvalidSpec)?;
    let image = decode_rgb8(bytes, max_pixels)?;
    let (width, height) = image.dimensions();
    let (new_width, new_height) = resized_size(width, height, spec.resize);
    let cropped = resize_and_crop(&image, new_width, new_height, spec.crop);
    Ok(normalize(&cropped, spec))
}

/// The image formats this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
        }
    }
}

fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => Ok(Format::Png),
        Ok(ImageFormat::Jpeg) => Ok(Format::Jpeg),
        Ok(other) => Err(ImageError::UnsupportedFormat(
            format!("{other:?}").to_uppercase(),
        )),
        Err(_) => Err(ImageError::NotAnImage),
    }
}

/// Decodes `bytes` into 8-bit RGB the way Pillow's `convert("RGB")` does: gray is replicated
/// into the three channels and alpha is dropped without compositing onto a background.
fn decode_rgb8(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let format = sniff(bytes)?;
    let (width, height, jpeg_frame) = match format {
        Format::Png => {
            let (width, height) = png_dimensions(bytes)?;
            check_png_palette(bytes)?;
            (width, height, None)
        }
        Format::Jpeg => {
            let (width, height, frame_at) = jpeg_dimensions(bytes)?;
            (width, height, Some(&bytes[frame_at..]))
        }
    };
    check_pixels(width, height, max_pixels)?;
    if let Some(frame) = jpeg_frame {
        check_jpeg_end(frame)?;
        check_jpeg_sampling(frame, width.max(height))?;
        check_jpeg_color_transform(bytes, frame.get(9).copied())?;
    }

    // The header was read by hand above; these limits hold the decoders to it, so a file
    // whose decoder disagrees with that reading still cannot allocate more than allowed.
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(MAX_DECODED_BYTES_PER_PIXEL)
            .saturating_add(DECODER_OVERHEAD_BYTES),
    );
    let too_large = || ImageError::TooLarge {
        width,
        height,
        max_pixels,
    };
    let map_err = |err: image::ImageError| match err {
        image::ImageError::Limits(_) => too_large(),
        image::ImageError::Unsupported(err) => {
            ImageError::UnsupportedFormat(format!("{} variant ({err})", format.name()))
        }
        image::ImageError::IoError(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt("the data ends before the image does".into())
        }
        other => ImageError::Corrupt(other.to_string()),
    };

    let decode = || match format {
        Format::Png => {
            let decoder = PngDecoder::with_limits(Cursor::new(bytes), limits).map_err(map_err)?;
            DynamicImage::from_decoder(decoder).map_err(map_err)
        }
        Format::Jpeg => {
            let mut decoder = JpegDecoder::new(Cursor::new(bytes)).map_err(map_err)?;
            decoder.set_limits(limits).map_err(map_err)?;
            DynamicImage::from_decoder(decoder).map_err(map_err)
        }
    };
    // The decoders should refuse every bad file with an error, yet fuzzing found files that
    // made them panic (the checks above refuse those). A file that still makes one panic is
    // refused as corrupt instead of failing the request as an internal error; nothing the
    // decoder touched outlives the call.
    let image =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).map_err(|_| {
            ImageError::Corrupt(format!("the {} decoder failed on it", format.name()))
        })??;
    if image.width() == 0 || image.height() == 0 {
        return Err(ImageError::Corrupt("the image has no pixels".into()));
    }
    Ok(image.into_rgb8())
}

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!(
            "the header declares an empty {width}x{height} image"
        )));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// Reads the size from a PNG's IHDR chunk, which the format requires to come first.
fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let Some(ihdr) = bytes.get(8..24) else {
        return Err(ImageError::Corrupt("the PNG header is cut short".into()));
    };
    if &ihdr[4..8] != b"IHDR" {
        return Err(ImageError::Corrupt(
            "the PNG does not start with an IHDR chunk".into(),
        ));
    }
    let width = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let height = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    Ok((width, height))
}

/// Refuses a palette (PLTE chunk) that is not a whole number of RGB entries, or holds more
/// than 256 of them, which the PNG standard calls an error: png 0.18 indexes past such
/// a palette and panics instead of reporting it. Only the chunks before the image data are
/// read, as the decoder reads the palette there; a chunk cut short is left to the decoder.
fn check_png_palette(bytes: &[u8]) -> Result<(), ImageError> {
    // The chunks start after the 8-byte signature; each is length (4), type (4), data, CRC (4).
    let mut at = 8;
    while let Some(header) = bytes.get(at..).and_then(|rest| rest.get(..8)) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"IDAT" | b"IEND" => break,
            b"PLTE" if length == 0 || !length.is_multiple_of(3) || length > 3 * 256 => {
                return Err(ImageError::Corrupt(format!(
                    "the PNG palette has {length} bytes, not 1 to 256 RGB entries of 3 bytes"
                )));
            }
            _ => at = at.saturating_add(12).saturating_add(length),
        }
    }
    Ok(())
}

/// Walks a JPEG's marker segments up to the first start-of-frame (SOF) marker and reads the
/// size from it; also returns where that marker is.
fn jpeg_dimensions(bytes: &[u8]) -> Result<(u32, u32, usize), ImageError> {
    let cut_short = || ImageError::Corrupt("the JPEG ends before its frame header".into());
    // Skip the SOI marker, which has no length.
    let mut at = 2;
    loop {
        let marker = match bytes.get(at..at + 2) {
            Some([0xFF, 0xFF]) => {
                // Any marker may be preceded by fill bytes.
                at += 1;
                continue;
            }
            Some([0xFF, marker]) => *marker,
            Some(_) => {
                return Err(ImageError::Corrupt(format!(
                    "the JPEG has no marker where one is expected (byte {at})"
                )));
            }
            None => return Err(cut_short()),
        };
        // Standalone markers carry no length field.
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            at += 2;
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            return Err(ImageError::Corrupt(
                "the JPEG has no frame header before its image data".into(),
            ));
        }
        let segment = bytes.get(at + 2..).ok_or_else(cut_short)?;
        let length = match segment {
            [high, low, ..] => usize::from(u16::from_be_bytes([*high, *low])),
            _ => return Err(cut_short()),
        };
        // SOF0 to SOF15 are 0xC0 to 0xCF, except DHT (0xC4), JPG (0xC8) and DAC (0xCC).
        let is_frame = (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker);
        if is_frame {
            // Length (2), sample precision (1), height (2), width (2).
            let Some(frame) = segment.get(..7) else {
                return Err(cut_short());
            };
            let height = u32::from(u16::from_be_bytes([frame[3], frame[4]]));
            let width = u32::from(u16::from_be_bytes([frame[5], frame[6]]));
            return Ok((width, height, at));
        }
        if length < 2 {
            return Err(ImageError::Corrupt(format!(
                "the JPEG has a marker segment of impossible length {length}"
            )));
        }
        at += 2 + length;
    }
}

/// Refuses the sampling factors zune-jpeg 0.5 cannot decode and panics on, baseline or
/// progressive: a component sampled more densely than the first one (which every common
/// encoder makes the densest, the luma), for which it sizes buffers by the first component;
/// and a grayscale image sampled other than 1x1 with a side over 65528 pixels, whose size
/// in 8-pixel blocks it computes in 16 bits, which overflows. `frame` starts at the frame
/// header's marker; a header cut short is left to the decoder.
fn check_jpeg_sampling(frame: &[u8], longest_side: u32) -> Result<(), ImageError> {
    // Marker (2), length (2), precision (1), height (2), width (2), component count (1),
    // then per component: identifier (1), sampling factors (horizontal << 4 | vertical), table.
    let Some(&count) = frame.get(9) else {
        return Ok(());
    };
    let Some(components) = frame.get(10..10 + 3 * usize::from(count)) else {
        return Ok(());
    };
    let factors = |component: &[u8]| (component[1] >> 4, component[1] & 0x0F);
    let mut chunks = components.chunks_exact(3);
    let Some((first_h, first_v)) = chunks.next().map(factors) else {
        return Ok(());
    };
    if chunks.map(factors).any(|(h, v)| h > first_h || v > first_v) {
        return Err(ImageError::UnsupportedFormat(
            "JPEG variant (a color component sampled more densely than the first)".into(),
        ));
    }
    if count == 1 && (first_h, first_v) != (1, 1) && longest_side > 65528 {
        return Err(ImageError::UnsupportedFormat(format!(
            "JPEG variant (grayscale sampled {first_h}x{first_v}, with a side over 65528 pixels)"
        )));
    }
    Ok(())
}

/// Refuses an Adobe marker (APP14) whose color transform contradicts the frame's component
/// count: YCbCr (1) is for three components, YCCK (2) for four. zune-jpeg 0.5 believes the
/// marker over the frame and panicked on a progressive four-component image marked YCbCr.
/// Like the decoder, this looks for markers past stray bytes and between scans, and skips
/// the payload of each marker segment it finds.
fn check_jpeg_color_transform(bytes: &[u8], components: Option<u8>) -> Result<(), ImageError> {
    let Some(components) = components else {
        return Ok(());
    };
    let mut at = 2;
    while let Some(pair) = bytes.get(at..at + 2) {
        // Stuffed zeros, fill bytes, restart markers and scan data carry no segment.
        let [0xFF, marker] = *pair else {
            at += 1;
            continue;
        };
        if matches!(marker, 0x00 | 0x01 | 0xFF | 0xD0..=0xD8) {
            at += 1;
            continue;
        }
        let Some(&[high, low]) = bytes.get(at + 2..at + 4) else {
            return Ok(());
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        if marker == 0xD9 || length < 2 {
            return Ok(());
        }
        // "Adobe", version (2), flags (2 + 2), transform (1).
        let payload = bytes.get(at + 4..).unwrap_or_default();
        if marker == 0xEE
            && length >= 14
            && let Some(&transform) = payload.strip_prefix(b"Adobe").and_then(|rest| rest.get(6))
            && ((transform == 1 && components != 3) || (transform == 2 && components != 4))
        {
            let space = if transform == 1 {
                "YCbCr (3)"
            } else {
                "YCCK (4)"
            };
            return Err(ImageError::Corrupt(format!(
                "the JPEG has {components} color components, but its Adobe marker says {space}"
            )));
        }
        at += 2 + length;
    }
    Ok(())
}

/// The JPEG decoder fills a truncated scan with gray and reports success; Pillow refuses such
/// a file, and so does this. An end-of-image marker cannot occur inside entropy-coded data
/// (a 0xFF byte there is always followed by 0x00 or a restart marker), so its absence after
/// the frame header means the file was cut.
fn check_jpeg_end(after_frame: &[u8]) -> Result<(), ImageError> {
    if after_frame.windows(2).any(|pair| pair == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(ImageError::Corrupt(
            "the JPEG has no end-of-image marker, so the file was cut short".into(),
        ))
    }
}

/// The size torchvision's `Resize(resize)` gives a `width` x `height` image
/// (`_compute_resized_output_size`): the shorter side becomes `resize` and the longer one
/// `int(resize * long / short)`, truncated. It is u64 because a thin strip can ask for a
/// longer side than u32 holds; only the crop of it is ever computed.
fn resized_size(width: u32, height: u32, resize: u32) -> (u64, u64) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python divides the exact integer product as a double and truncates; the product is
    // below 2^53, so this is the same computation.
    let new_long = (f64::from(resize) * f64::from(long) / f64::from(short)) as u64;
    if width <= height {
        (u64::from(resize), new_long)
    } else {
        (new_long, u64::from(resize))
    }
}

/// torchvision's `CenterCrop(crop)` of the image resized to `new_width` x `new_height`: a
/// side shorter than `crop` is padded with zeros (the odd pixel going to the right or
/// bottom), and the crop offset is `int(round((side - crop) / 2))`, where Python rounds
/// halves to even. Only the pixels inside the crop are resampled, with the weights the full
/// resize would use, so the result is the same as resizing everything and then cropping.
fn resize_and_crop(image: &RgbImage, new_width: u64, new_height: u64, crop: u32) -> Vec<u8> {
    let crop_side = crop as usize;
    let (columns, dst_x) = crop_axis(new_width, crop);
    let (rows, dst_y) = crop_axis(new_height, crop);
    let region = resample(image, new_width, new_height, columns.clone(), rows.clone());

    let mut out = vec![0u8; crop_side * crop_side * 3];
    let row_bytes = (columns.end - columns.start) as usize * 3;
    for (i, line) in region.chunks_exact(row_bytes).enumerate() {
        let at = ((dst_y + i) * crop_side + dst_x) * 3;
        out[at..at + row_bytes].copy_from_slice(line);
    }
    out
}

/// For one axis of the resized image, of length `side`: the range of resized pixels inside
/// the crop and where the first of them lands in the crop.
fn crop_axis(side: u64, crop: u32) -> (Range<u64>, usize) {
    let crop = u64::from(crop);
    if side < crop {
        (0..side, ((crop - side) / 2) as usize)
    } else {
        let offset = ((side - crop) as f64 / 2.0).round_ties_even() as u64;
        (offset..offset + crop, 0)
    }
}

/// Fixed-point precision of Pillow's 8-bit resampling weights (`PRECISION_BITS` in
/// `Resample.c`): 8 bits of headroom for the pixel value and 2 for overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resizes `image` to `new_width` x `new_height` with Pillow's antialiased bilinear filter
/// (`Image.resize(size, Image.BILINEAR)`, what torchvision's `Resize` runs on PIL images) and
/// returns only the pixels in `columns` x `rows`, row-major RGB.
///
/// This follows Pillow's `ImagingResample` step for step, because a one-level difference in
/// 8-bit output is already visible after normalization: weights are computed in f64, then
/// rounded to fixed point; the horizontal pass runs first and rounds to 8 bits; the vertical
/// pass reads those rounded values; an axis whose size does not change is not resampled.
fn resample(
    image: &RgbImage,
    new_width: u64,
    new_height: u64,
    columns: Range<u64>,
    rows: Range<u64>,
) -> Vec<u8> {
    let (width, height) = image.dimensions();
    let src = image.as_raw();
    let stride = width as usize * 3;
    let span = (columns.end - columns.start) as usize;
    let horizontal = (new_width != u64::from(width))
        .then(|| Kernel::bilinear(width, new_width, columns.clone()));
    let vertical = (new_height != u64::from(height))
        .then(|| Kernel::bilinear(height, new_height, rows.clone()));

    // The source rows the vertical pass reads, or the crop's own rows if there is none.
    let source_rows = match &vertical {
        Some(kernel) => kernel.input_range(),
        None => rows.start as usize..rows.end as usize,
    };

    let mut temp = Vec::with_capacity(source_rows.len() * span * 3);
    for y in source_rows.clone() {
        let line = &src[y * stride..(y + 1) * stride];
        match &horizontal {
            Some(kernel) => {
                for (start, weights) in kernel.taps() {
                    let pixels = &line[start * 3..(start + weights.len()) * 3];
                    for c in 0..3 {
                        let sum = weights
                            .iter()
                            .zip(pixels[c..].iter().step_by(3))
                            .fold(ROUNDING, |sum, (w, p)| sum + w * i32::from(*p));
                        temp.push(clip8(sum));
                    }
                }
            }
            None => {
                temp.extend_from_slice(&line[columns.start as usize * 3..columns.end as usize * 3]);
            }
        }
    }

    let Some(kernel) = vertical else {
        return temp;
    };
    let row_bytes = span * 3;
    let mut out = Vec::with_capacity((rows.end - rows.start) as usize * row_bytes);
    for (start, weights) in kernel.taps() {
        let first = (start - source_rows.start) * row_bytes;
        for b in 0..row_bytes {
            let sum = weights
                .iter()
                .zip(temp[first + b..].iter().step_by(row_bytes))
                .fold(ROUNDING, |sum, (w, p)| sum + w * i32::from(*p));
            out.push(clip8(sum));
        }
    }
    out
}

/// Half of the fixed-point unit, added so that the final shift rounds to nearest.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's `clip8`: a fixed-point sum back to 8 bits, saturating.
fn clip8(sum: i32) -> u8 {
    if sum >= 1 << (PRECISION_BITS + 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// Pillow's resampling weights along one axis for a range of output pixels, in fixed point.
/// The weights of one output pixel are non-negative and sum to 1 (give or take rounding), so
/// with 22 fractional bits a weighted sum of 8-bit values stays far below 2^31.
#[derive(Debug)]
struct Kernel {
    /// Each output pixel's first input pixel and number of weights.
    windows: Vec<(usize, usize)>,
    /// The weights of all windows, one after the other.
    weights: Vec<i32>,
}

impl Kernel {
    /// `precompute_coeffs` and `normalize_coeffs_8bpc` of Pillow's `Resample.c` for the
    /// bilinear (triangle) filter, whose support widens with the downscaling factor: that is
    /// the antialiasing. Each output pixel's weights depend only on its own position, so
    /// computing a sub-range gives exactly the weights of the full resize.
    fn bilinear(in_size: u32, out_size: u64, outputs: Range<u64>) -> Kernel {
        const SUPPORT: f64 = 1.0;
        let scale = f64::from(in_size) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = SUPPORT * filter_scale;
        let unit = f64::from(1u32 << PRECISION_BITS);

        let mut windows = Vec::with_capacity((outputs.end - outputs.start) as usize);
        let mut weights = Vec::new();
        let mut window = Vec::new();
        for out in outputs {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let min = ((center - support + 0.5) as i64).max(0);
            let max = ((center + support + 0.5) as i64).min(i64::from(in_size));
            window.clear();
            window.extend((min..max).map(|x| {
                let distance = ((x as f64 - center + 0.5) * (1.0 / filter_scale)).abs();
                if distance < 1.0 { 1.0 - distance } else { 0.0 }
            }));
            let total: f64 = window.iter().sum();
            weights.extend(window.iter().map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                // Round half away from zero, as Pillow does.
                if w < 0.0 {
                    (-0.5 + w * unit) as i32
                } else {
                    (0.5 + w * unit) as i32
                }
            }));
            windows.push((min as usize, window.len()));
        }
        Kernel { windows, weights }
    }

    /// Each output pixel's first input pixel and weights.
    fn taps(&self) -> impl Iterator<Item = (usize, &[i32])> {
        self.windows.iter().scan(0, |used, &(start, len)| {
            let weights = &self.weights[*used..*used + len];
            *used += len;
            Some((start, weights))
        })
    }

    /// The input pixels some output pixel reads.
    fn input_range(&self) -> Range<usize> {
        let start = self.windows.iter().map(|w| w.0).min().unwrap_or(0);
        let end = self
            .windows
            .iter()
            .map(|w| w.0 + w.1)
            .max()
            .unwrap_or(start);
        start..end
    }
}

/// `ToTensor()` then `Normalize(mean, std)`, in f32 as torch computes them, then the channel
/// order and layout the model takes.
fn normalize(rgb: &[u8], spec: &ImagePreprocess) -> Vec<f32> {
    let pixels = rgb.len() / 3;
    let mut out = vec![0f32; rgb.len()];
    for (i, pixel) in rgb.chunks_exact(3).enumerate() {
        for (c, &value) in pixel.iter().enumerate() {
            let normalized = (f32::from(value) / 255.0 - spec.mean[c]) / spec.std[c];
            let channel = match spec.channels {
                ChannelOrder::Rgb => c,
                ChannelOrder::Bgr => 2 - c,
            };
            let index = match spec.layout {
                Layout::Nchw => channel * pixels + i,
                Layout::Nhwc => i * 3 + channel,
            };
            out[index] = normalized;
        }
    }
    out
}

/// Decodes standard base64 (padding optional, whitespace ignored), also behind a data-URL
/// prefix such as `data:image/png;base64,`. The media type is not trusted: [`preprocess`]
/// checks the bytes themselves.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ImageError> {
    let mut payload = text.trim();
    if let Some(rest) = strip_prefix_ignore_case(payload, "data:") {
        let Some((header, data)) = rest.split_once(',') else {
            return Err(ImageError::Base64(
                "the data URL has no ',' before its data".into(),
            ));
        };
        if !header.to_ascii_lowercase().ends_with(";base64") {
            return Err(ImageError::Base64(
                "the data URL is not base64-encoded (expected ';base64,')".into(),
            ));
        }
        payload = data;
    }
    // Encoders that wrap lines (MIME, `base64` on the command line) insert newlines.
    let compact: String;
    if payload.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = payload
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        payload = &compact;
    }
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(payload)
        .map_err(|err| ImageError::Base64(err.to_string()))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// One entry of a classifier's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Class {
    pub label: String,
    pub index: usize,
    pub score: f32,
}

/// The `k` most probable classes under the softmax of `logits`, most probable first.
///
/// The softmax subtracts the largest logit and runs in f64, so large logits neither overflow
/// nor lose the small probabilities. Classes are ranked by logit, which orders them by score
/// even where scores underflow to the same value; equal logits keep the lower index first.
/// A NaN logit ranks as -inf and scores 0. If some logits are +inf, they share the whole
/// probability; if all are -inf or NaN, every class scores the same. A class without a label
/// is labelled with its index.
pub fn top_k(logits: &[f32], k: usize, labels: &[String]) -> Vec<Class> {
    let keys: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                f64::NEG_INFINITY
            } else {
                f64::from(x)
            }
        })
        .collect();
    let max = keys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = if max == f64::INFINITY {
        keys.iter()
            .map(|&x| if x == f64::INFINITY { 1.0 } else { 0.0 })
            .collect()
    } else if max == f64::NEG_INFINITY {
        vec![1.0; keys.len()]
    } else {
        keys.iter().map(|&x| (x - max).exp()).collect()
    };
    // The largest logit contributes exp(0) = 1, so the sum is at least 1.
    let sum: f64 = weights.iter().sum();

    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|index| Class {
            label: labels
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            index,
            score: (weights[index] / sum) as f32,
        })
        .collect()
}

/// Reads a labels file: one label per line, line `i` naming class `i`. Trailing empty lines
/// and a UTF-8 byte order mark are ignored.
pub fn read_labels(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read labels file {}: {err}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut labels: Vec<String> = text.lines().map(str::to_owned).collect();
    while labels.last().is_some_and(String::is_empty) {
        labels.pop();
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgb, RgbaImage};
    use std::time::{Duration, Instant};

    fn spec(resize: u32, crop: u32) -> ImagePreprocess {
        ImagePreprocess {
            resize,
            crop,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: ChannelOrder::Rgb,
            layout: Layout::Nchw,
        }
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([
                (x * 7 + y * 3) as u8,
                ((x * 13) ^ (y * 5)) as u8,
                ((x + y) * 11) as u8,
            ])
        })
    }

    /// CRC-32 (IEEE, reflected), as PNG chunks carry it.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
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

    /// A PNG signature and a valid IHDR chunk for an 8-bit RGB image, and nothing else.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend(width.to_be_bytes());
        chunk.extend(height.to_be_bytes());
        chunk.extend([8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(13u32.to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
        png
    }

    #[test]
    fn crc32_matches_the_png_iend_chunk() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn declared_size_is_refused_before_decoding() {
        let bomb = png_header_only(20_000, 20_000);
        let started = Instant::now();
        let err = preprocess(&bomb, &spec(256, 224), 50_000_000).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(
            err,
            ImageError::TooLarge {
                width: 20_000,
                height: 20_000,
                max_pixels: 50_000_000
            }
        );
        assert_eq!(
            err.to_string(),
            "the image is 20000x20000 pixels, more than the 50000000 pixels allowed: \
             downscale it and send it again"
        );
    }

    #[test]
    fn declared_size_of_a_jpeg_is_refused_before_decoding() {
        // SOI, an APP0 segment to skip, then SOF0 declaring 65535 x 65535 with 3 components.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        jpeg.extend([0xFF, 0xC0, 0x00, 0x11, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x03]);
        jpeg.extend([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        let err = preprocess(&jpeg, &spec(256, 224), 50_000_000).unwrap_err();
        assert!(matches!(
            err,
            ImageError::TooLarge {
                width: 65_535,
                height: 65_535,
                ..
            }
        ));
    }

    #[test]
    fn a_header_without_image_data_is_corrupt() {
        let err = preprocess(&png_header_only(64, 64), &spec(64, 64), 1 << 20).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        let err = preprocess(&jpeg, &spec(64, 64), 1 << 20).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn truncated_images_are_corrupt() {
        let image = DynamicImage::ImageRgb8(pattern(64, 48));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&image, format);
            assert!(preprocess(&bytes, &spec(32, 32), 1 << 20).is_ok());
            let err = preprocess(&bytes[..bytes.len() / 2], &spec(32, 32), 1 << 20).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt(_)), "{format:?}: {err:?}");
            assert!(
                err.to_string()
                    .starts_with("the image is corrupt or truncated: ")
            );
        }
    }

    #[test]
    fn random_bytes_are_not_an_image() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert_eq!(
            preprocess(&noise, &spec(32, 32), 1 << 20),
            Err(ImageError::NotAnImage)
        );
        assert_eq!(
            preprocess(b"", &spec(32, 32), 1 << 20),
            Err(ImageError::NotAnImage)
        );
        assert_eq!(
            preprocess(b"{\"hello\": 1}", &spec(32, 32), 1 << 20),
            Err(ImageError::NotAnImage)
        );
    }

    #[test]
    fn other_formats_are_named() {
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        let err = preprocess(gif, &spec(32, 32), 1 << 20).unwrap_err();
        assert_eq!(err, ImageError::UnsupportedFormat("GIF".into()));
        assert_eq!(
            err.to_string(),
            "unsupported image format GIF: send a PNG or JPEG image"
        );
        let bmp = b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00";
        assert_eq!(
            preprocess(bmp, &spec(32, 32), 1 << 20),
            Err(ImageError::UnsupportedFormat("BMP".into()))
        );
        let webp = b"RIFF\x24\x00\x00\x00WEBPVP8 ";
        assert_eq!(
            preprocess(webp, &spec(32, 32), 1 << 20),
            Err(ImageError::UnsupportedFormat("WEBP".into()))
        );
    }

    #[test]
    fn limit_is_inclusive_and_leaves_room_for_the_decoder() {
        let image = DynamicImage::ImageRgb8(pattern(64, 48));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&image, format);
            assert!(preprocess(&bytes, &spec(32, 32), 64 * 48).is_ok());
            assert_eq!(
                preprocess(&bytes, &spec(32, 32), 64 * 48 - 1),
                Err(ImageError::TooLarge {
                    width: 64,
                    height: 48,
                    max_pixels: 64 * 48 - 1
                })
            );
        }
    }

    #[test]
    fn resized_size_truncates_like_torchvision() {
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(97, 301, 256), (256, 794));
        assert_eq!(resized_size(64, 48, 256), (341, 256));
        assert_eq!(resized_size(300, 300, 224), (224, 224));
        // A one-pixel strip asks for a side longer than u32 holds.
        assert_eq!(resized_size(1, 50_000_000, 256), (256, 12_800_000_000));
    }

    #[test]
    fn crop_offsets_round_half_to_even_and_pad_like_torchvision() {
        // (341 - 224) / 2 = 58.5, which Python's round() takes to 58.
        assert_eq!(crop_axis(341, 224), (58..282, 0));
        // (259 - 224) / 2 = 17.5 goes to 18.
        assert_eq!(crop_axis(259, 224), (18..242, 0));
        assert_eq!(crop_axis(224, 224), (0..224, 0));
        // Padding puts the odd pixel on the right or bottom: 63 = 31 + 32.
        assert_eq!(crop_axis(161, 224), (0..161, 31));
        assert_eq!(crop_axis(160, 224), (0..160, 32));
    }

    #[test]
    fn cropping_while_resizing_equals_resizing_then_cropping() {
        for (width, height, resize, crop) in [
            (320, 240, 256, 224),
            (97, 301, 256, 224),
            (64, 48, 256, 224),
            (500, 375, 160, 224),
            (300, 200, 227, 201),
            (256, 256, 256, 100),
            (40, 1000, 8, 8),
        ] {
            let image = pattern(width, height);
            let (new_width, new_height) = resized_size(width, height, resize);
            let full = resample(&image, new_width, new_height, 0..new_width, 0..new_height);
            let cropped = resize_and_crop(&image, new_width, new_height, crop);
            let (columns, dst_x) = crop_axis(new_width, crop);
            let (rows, dst_y) = crop_axis(new_height, crop);
            let (crop, new_width) = (crop as usize, new_width as usize);
            for y in 0..crop {
                for x in 0..crop {
                    let inside = (dst_x..dst_x + columns.clone().count()).contains(&x)
                        && (dst_y..dst_y + rows.clone().count()).contains(&y);
                    let expected = if inside {
                        let sx = columns.start as usize + x - dst_x;
                        let sy = rows.start as usize + y - dst_y;
                        let at = (sy * new_width + sx) * 3;
                        [full[at], full[at + 1], full[at + 2]]
                    } else {
                        [0, 0, 0]
                    };
                    let at = (y * crop + x) * 3;
                    assert_eq!(
                        cropped[at..at + 3],
                        expected,
                        "{width}x{height} -> {resize}/{crop} at ({x}, {y})"
                    );
                }
            }
        }
    }

    #[test]
    fn resampling_keeps_flat_images_flat_and_follows_pillow_weights() {
        let flat = RgbImage::from_pixel(37, 23, Rgb([200, 17, 255]));
        let out = resample(&flat, 11, 7, 0..11, 0..7);
        assert!(out.chunks_exact(3).all(|p| p == [200, 17, 255]));
        // Doubling [0, 100] puts Pillow's output samples at 0.25 and 0.75 of a pixel, with
        // weights 1, 0.75/0.25 and 0.25/0.75, 1 after clamping to the edge: 0, 25, 75, 100.
        let pair = RgbImage::from_fn(2, 1, |x, _| Rgb([(x * 100) as u8; 3]));
        let out = resample(&pair, 4, 1, 0..4, 0..1);
        let reds: Vec<u8> = out.chunks_exact(3).map(|p| p[0]).collect();
        assert_eq!(reds, [0, 25, 75, 100]);
    }

    #[test]
    fn thin_strips_cost_only_their_crop() {
        let strip = DynamicImage::ImageRgb8(pattern(1, 20_000));
        let bytes = encode(&strip, ImageFormat::Png);
        let started = Instant::now();
        let out = preprocess(&bytes, &spec(256, 224), 1 << 20).unwrap();
        assert_eq!(out.len(), 3 * 224 * 224);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn layout_channel_order_and_normalization() {
        let image = RgbImage::from_fn(2, 2, |x, y| {
            let v = (10 * (y * 2 + x)) as u8;
            Rgb([v, v + 1, v + 2])
        });
        let bytes = encode(&DynamicImage::ImageRgb8(image), ImageFormat::Png);
        let mut spec = ImagePreprocess {
            mean: [0.5, 0.25, 0.125],
            std: [0.5, 2.0, 4.0],
            ..spec(2, 2)
        };
        let norm = |v: u8, c: usize| (f32::from(v) / 255.0 - spec.mean[c]) / spec.std[c];
        let pixels = [0u8, 10, 20, 30];

        let chw = preprocess(&bytes, &spec, 100).unwrap();
        let expected: Vec<f32> = (0..3)
            .flat_map(|c| pixels.iter().map(move |&v| (v + c as u8, c)))
            .map(|(v, c)| norm(v, c))
            .collect();
        assert_eq!(chw, expected);

        spec.layout = Layout::Nhwc;
        spec.channels = ChannelOrder::Bgr;
        let hwc_bgr = preprocess(&bytes, &spec, 100).unwrap();
        let expected: Vec<f32> = pixels
            .iter()
            .flat_map(|&v| [2usize, 1, 0].map(|c| norm(v + c as u8, c)))
            .collect();
        assert_eq!(hwc_bgr, expected);
        assert_eq!(spec.sample_shape(), [2, 2, 3]);
    }

    #[test]
    fn alpha_is_dropped_and_gray_replicated_like_pillow_convert_rgb() {
        // A fully transparent pixel keeps its color: Pillow's convert("RGB") does not
        // composite onto a background.
        let rgba = RgbaImage::from_pixel(3, 3, image::Rgba([200, 100, 50, 0]));
        let bytes = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let out = preprocess(&bytes, &spec(3, 3), 100).unwrap();
        let expected = [200u8, 100, 50].map(|v| f32::from(v) / 255.0);
        for (c, plane) in out.chunks_exact(9).enumerate() {
            assert!(plane.iter().all(|&v| v == expected[c]));
        }

        let gray = GrayImage::from_pixel(4, 4, image::Luma([77]));
        let bytes = encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Png);
        let out = preprocess(&bytes, &spec(4, 4), 100).unwrap();
        assert!(out.iter().all(|&v| v == 77.0 / 255.0));
    }

    #[test]
    fn sixteen_bit_pngs_are_scaled_to_eight_bits() {
        let deep = image::ImageBuffer::<Rgb<u16>, _>::from_pixel(2, 2, Rgb([65_535, 32_896, 0]));
        let bytes = encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png);
        let out = preprocess(&bytes, &spec(2, 2), 100).unwrap();
        // 32896 / 65535 * 255 = 128.0; Pillow, keeping the high byte, would give 128 as well.
        assert_eq!(out[0], 1.0);
        assert_eq!(out[4], 128.0 / 255.0);
        assert_eq!(out[8], 0.0);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(spec(256, 224).validate().is_ok());
        assert!(spec(0, 224).validate().unwrap_err().contains("resize"));
        assert!(
            spec(256, MAX_SIDE + 1)
                .validate()
                .unwrap_err()
                .contains("crop")
        );
        let zero_std = ImagePreprocess {
            std: [1.0, 0.0, 1.0],
            ..spec(256, 224)
        };
        assert!(zero_std.validate().unwrap_err().contains("std"));
        let bytes = encode(&DynamicImage::ImageRgb8(pattern(8, 8)), ImageFormat::Png);
        assert!(matches!(
            preprocess(&bytes, &zero_std, 100),
            Err(ImageError::InvalidSpec(_))
        ));
    }

    #[test]
    fn config_reads_from_model_toml_with_defaults() {
        let spec: ImagePreprocess = toml::from_str(
            "resize = 256\ncrop = 224\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n",
        )
        .unwrap();
        assert_eq!(spec.channels, ChannelOrder::Rgb);
        assert_eq!(spec.layout, Layout::Nchw);
        assert_eq!(spec.sample_shape(), [3, 224, 224]);
        let spec: ImagePreprocess = toml::from_str(
            "resize = 256\ncrop = 224\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n\
             channels = \"bgr\"\nlayout = \"nhwc\"\n",
        )
        .unwrap();
        assert_eq!(
            (spec.channels, spec.layout),
            (ChannelOrder::Bgr, Layout::Nhwc)
        );
        let err = toml::from_str::<ImagePreprocess>(
            "resize = 256\ncrop = 224\nmean = [0, 0, 0]\nstd = [1, 1, 1]\nsize = 3\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(
            toml::from_str::<ImagePreprocess>(
                "resize = 256\ncrop = 224\nmean = [0, 0, 0]\nstd = [1, 1, 1]\nchannels = \"RGB\"\n",
            )
            .is_err()
        );
    }

    #[test]
    fn base64_with_and_without_padding_and_data_urls() {
        let bytes = encode(&DynamicImage::ImageRgb8(pattern(5, 5)), ImageFormat::Png);
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(
            padded.len(),
            unpadded.len(),
            "the test needs padding to strip"
        );
        assert_eq!(decode_base64(&padded).unwrap(), bytes);
        assert_eq!(decode_base64(unpadded).unwrap(), bytes);
        for prefix in [
            "data:image/png;base64,",
            "data:image/jpeg;base64,",
            "DATA:image/PNG;BASE64,",
        ] {
            assert_eq!(decode_base64(&format!("{prefix}{padded}")).unwrap(), bytes);
        }
        let wrapped: String = padded
            .as_bytes()
            .chunks(76)
            .map(|line| format!("{}\r\n", std::str::from_utf8(line).unwrap()))
            .collect();
        assert_eq!(decode_base64(&wrapped).unwrap(), bytes);
        assert!(preprocess(&decode_base64(&padded).unwrap(), &spec(5, 5), 25).is_ok());
    }

    #[test]
    fn bad_base64_says_why() {
        assert!(matches!(
            decode_base64("iVBORw0K!!!"),
            Err(ImageError::Base64(_))
        ));
        assert!(matches!(
            decode_base64("data:image/png,iVBORw0K"),
            Err(ImageError::Base64(reason)) if reason.contains(";base64")
        ));
        assert!(matches!(
            decode_base64("data:image/png;base64"),
            Err(ImageError::Base64(_))
        ));
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn top_k_orders_by_probability() {
        let classes = top_k(&[1.0, 3.0, 2.0, 0.5], 3, &labels(&["a", "b", "c", "d"]));
        let order: Vec<(&str, usize)> = classes
            .iter()
            .map(|c| (c.label.as_str(), c.index))
            .collect();
        assert_eq!(order, [("b", 1), ("c", 2), ("a", 0)]);
        let z: f64 = [1.0f64, 3.0, 2.0, 0.5].iter().map(|x| x.exp()).sum();
        assert!((f64::from(classes[0].score) - 3f64.exp() / z).abs() < 1e-7);
        assert!(classes.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let logits: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let all = top_k(&logits, logits.len(), &[]);
        assert_eq!(all.len(), 1000);
        let sum: f64 = all.iter().map(|c| f64::from(c.score)).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");

        let huge = top_k(&[3.0e38, 3.0e38 - 1.0e32, -3.0e38], 3, &[]);
        assert!(huge.iter().all(|c| c.score.is_finite()));
        assert_eq!(huge[0].index, 0);
        assert_eq!(huge[2].score, 0.0);
    }

    #[test]
    fn top_k_ties_nan_and_short_labels() {
        let classes = top_k(&[2.0, f32::NAN, 2.0, 5.0], 10, &labels(&["a", "b"]));
        let order: Vec<usize> = classes.iter().map(|c| c.index).collect();
        assert_eq!(order, [3, 0, 2, 1]);
        assert_eq!(classes[0].label, "3");
        assert_eq!(classes[1].label, "a");
        assert_eq!(classes[1].score, classes[2].score);
        assert_eq!(classes[3].label, "b");
        assert_eq!(classes[3].score, 0.0);

        assert!(top_k(&[1.0, 2.0], 0, &[]).is_empty());
        assert!(top_k(&[], 5, &[]).is_empty());
        let inf = top_k(&[f32::INFINITY, 1.0, f32::INFINITY], 3, &[]);
        assert_eq!(
            inf.iter().map(|c| (c.index, c.score)).collect::<Vec<_>>(),
            [(0, 0.5), (2, 0.5), (1, 0.0)]
        );
        let none = top_k(&[f32::NAN, f32::NEG_INFINITY], 2, &[]);
        assert!(none.iter().all(|c| c.score == 0.5));
    }

    #[test]
    fn labels_file_one_per_line() {
        let dir = std::env::temp_dir().join(format!("image-input-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.txt");
        std::fs::write(&path, "\u{feff}tench, Tinca tinca\r\ngoldfish\n\nshark\n\n").unwrap();
        assert_eq!(
            read_labels(&path).unwrap(),
            labels(&["tench, Tinca tinca", "goldfish", "", "shark"])
        );
        std::fs::write(&path, "a\nb").unwrap();
        assert_eq!(read_labels(&path).unwrap(), labels(&["a", "b"]));
        std::fs::remove_dir_all(&dir).unwrap();
        let err = read_labels(&dir.join("missing.txt")).unwrap_err();
        assert!(err.starts_with("cannot read labels file "), "{err}");
    }
}
