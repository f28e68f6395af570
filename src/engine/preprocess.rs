//! Image bytes to input tensor: format check, a pixel cap read from the header before any pixel
//! is decoded, decode, resize, normalise. Runs on the executor's threads, never on the async
//! workers.
//!
//! This is most of the CPU a request costs beside inference, so it is built for speed:
//! - JPEGs are decoded with zune-jpeg straight into a buffer the thread keeps; a JPEG much larger
//!   than the largest model input is decoded at 1/2, 1/4 or 1/8 scale in the DCT (jpeg-decoder's
//!   scaled IDCT), which is far cheaper than decoding it whole and shrinking it afterwards.
//! - Resizing uses `fast_image_resize` (SIMD convolution) with the bilinear (triangle) filter:
//!   the same filter as the `image` crate's `FilterType::Triangle` used before, so the models see
//!   the same pictures up to rounding (`resize_matches_the_image_crate_within_rounding` below,
//!   and `edgeinfer bench overhead`, which reports the mean absolute difference).
//! - Normalisation and the NCHW/NHWC layout are written in one pass into a tensor buffer the
//!   caller reuses.
//!
//! [`Preprocessor`] owns the buffers; one lives on each executor thread, so the hot path
//! allocates nothing large once the buffers have grown to the largest image seen.

use std::io::Cursor;

use fast_image_resize as fir;
use image::{ImageFormat, ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::resample::{ChannelMap, Picture, Resampler};
use crate::models::geometry::{self, ResizeMode};
use crate::models::{ChannelOrder, InputSpec, Layout};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("empty image")]
    Empty,
    #[error("not a JPEG or PNG image")]
    UnsupportedFormat,
    #[error("image is {width}x{height} = {} pixels, over the limit of {max} pixels", *width as u64 * *height as u64)]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("cannot decode image: {0}")]
    Decode(String),
}

/// Per-thread decode and resize state: the decoded picture, the resize scratch and the resizer.
pub struct Preprocessor {
    /// Decoded RGB pixels, row-major, `width * height * 3` bytes in use.
    pixels: Vec<u8>,
    width: u32,
    height: u32,
    resized: Vec<u8>,
    resizer: fir::Resizer,
    options: fir::ResizeOptions,
    /// The one-pass resize + normalise (NCHW on AVX2 + FMA; `fused` says whether it is used).
    resampler: Resampler,
    fused: bool,
}

impl Default for Preprocessor {
    fn default() -> Self {
        Self::new()
    }
}

impl Preprocessor {
    pub fn new() -> Self {
        Self {
            pixels: Vec::new(),
            width: 0,
            height: 0,
            resized: Vec::new(),
            resizer: fir::Resizer::new(),
            options: fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)),
            resampler: Resampler::default(),
            fused: Resampler::available(),
        }
    }

    /// The two-pass path (fast_image_resize, then [`normalise_into`]) even where the one-pass
    /// [`Resampler`] could run: benchmarks and tests compare the two.
    pub fn two_pass(mut self) -> Self {
        self.fused = false;
        self
    }

    /// Whether [`Preprocessor::tensor_into`] takes the one-pass path for the picture last decoded
    /// into `input` by `mode`: NCHW on a CPU that runs it, unless the picture is already the
    /// input's size (then only normalising is left to do).
    pub fn one_pass(&self, input: &InputSpec, mode: ResizeMode) -> bool {
        let unscaled = self.width == input.size && self.height == input.size && mode == ResizeMode::Stretch;
        self.fused && input.layout == Layout::Nchw && !unscaled
    }

    /// Size of the picture last decoded.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Decodes a JPEG or PNG into this thread's buffer, refusing images over `max_pixels` from
    /// their header alone. `min_side` is the largest model input: a JPEG whose shorter side is at
    /// least twice that may be decoded at a reduced scale, never below `min_side`.
    pub fn decode(&mut self, bytes: &[u8], max_pixels: u64, min_side: u32) -> Result<(), ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        match image::guess_format(bytes) {
            Ok(ImageFormat::Jpeg) => {
                self.decode_jpeg(bytes, max_pixels, min_side)?;
                // Phones store portrait photos sideways and say so in EXIF: turn the picture
                // upright before anything looks at it. Upright pictures (nearly all) cost a scan
                // of the headers and nothing else.
                let orientation = geometry::exif_orientation(bytes);
                if orientation != 1 {
                    self.reorient(orientation);
                }
                Ok(())
            }
            Ok(ImageFormat::Png) => self.decode_png(bytes, max_pixels),
            _ => Err(ImageError::UnsupportedFormat),
        }
    }

    fn reorient(&mut self, orientation: u8) {
        let len = self.width as usize * self.height as usize * 3;
        self.pixels.truncate(len);
        let img = RgbImage::from_raw(self.width, self.height, std::mem::take(&mut self.pixels)).expect("buffer matches its size");
        let img = geometry::apply_orientation(img, orientation);
        (self.width, self.height) = img.dimensions();
        self.pixels = img.into_raw();
    }

    fn decode_jpeg(&mut self, bytes: &[u8], max_pixels: u64, min_side: u32) -> Result<(), ImageError> {
        let opts = DecoderOptions::default().set_max_width(1 << 16).set_max_height(1 << 16);
        let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
        dec.decode_headers().map_err(|e| ImageError::Decode(e.to_string()))?;
        let (w, h) = dec.dimensions().ok_or_else(|| ImageError::Decode("no frame header".into()))?;
        let (w, h) = (w as u32, h as u32);
        check_size(w, h, max_pixels)?;
        let factor = dct_scale(w, h, min_side);
        if factor > 1 {
            // Scaled decode is an optimisation only: on any failure the full decode below decides.
            if self.decode_jpeg_scaled(bytes, w.div_ceil(factor), h.div_ceil(factor)).is_ok() {
                return Ok(());
            }
        }
        let len = w as usize * h as usize * 3;
        self.pixels.resize(len, 0);
        dec.decode_into(&mut self.pixels[..len]).map_err(|e| ImageError::Decode(e.to_string()))?;
        (self.width, self.height) = (w, h);
        Ok(())
    }

    /// Decodes at 1/2, 1/4 or 1/8 scale in the DCT (jpeg-decoder's scaled IDCT).
    fn decode_jpeg_scaled(&mut self, bytes: &[u8], want_w: u32, want_h: u32) -> Result<(), ImageError> {
        let err = |e: jpeg_decoder::Error| ImageError::Decode(e.to_string());
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        let (w, h) = dec.scale(want_w.min(u16::MAX as u32) as u16, want_h.min(u16::MAX as u32) as u16).map_err(err)?;
        let raw = dec.decode().map_err(err)?;
        let info = dec.info().ok_or_else(|| ImageError::Decode("no frame header".into()))?;
        let (w, h) = (w as u32, h as u32);
        let n = w as usize * h as usize;
        self.pixels.clear();
        match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 if raw.len() >= n * 3 => self.pixels.extend_from_slice(&raw[..n * 3]),
            jpeg_decoder::PixelFormat::L8 if raw.len() >= n => self.pixels.extend(raw[..n].iter().flat_map(|&v| [v, v, v])),
            _ => return Err(ImageError::Decode("unsupported JPEG colour format for scaled decoding".into())),
        }
        (self.width, self.height) = (w, h);
        Ok(())
    }

    fn decode_png(&mut self, bytes: &[u8], max_pixels: u64) -> Result<(), ImageError> {
        // The size straight from the IHDR chunk first: the decoder refuses a huge one with its
        // own allocation limit ("Memory limit exceeded") before the cap below could say why.
        if let Some((w, h)) = png_header_size(bytes) {
            check_size(w, h, max_pixels)?;
        }
        let reader = || ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
        let (w, h) = reader().into_dimensions().map_err(|e| ImageError::Decode(e.to_string()))?;
        check_size(w, h, max_pixels)?;
        let mut r = reader();
        let mut limits = image::Limits::default();
        // Belt and braces: the decoder itself also refuses to allocate past the cap (RGBA 16-bit worst case).
        limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
        r.limits(limits);
        let img = r.decode().map_err(|e| ImageError::Decode(e.to_string()))?.into_rgb8();
        self.pixels.clear();
        self.pixels.extend_from_slice(img.as_raw());
        (self.width, self.height) = img.dimensions();
        Ok(())
    }

    /// Takes a picture that is already decoded (tests, tools).
    pub fn load(&mut self, img: &RgbImage) {
        self.pixels.clear();
        self.pixels.extend_from_slice(img.as_raw());
        (self.width, self.height) = img.dimensions();
    }

    /// Resizes the decoded picture to the model's input side (the whole picture, or its
    /// central crop, as `mode` says) and writes the normalised tensor into `out` (cleared first)
    /// in the model's layout.
    pub fn tensor_into(&mut self, input: &InputSpec, mode: ResizeMode, out: &mut Vec<f32>) {
        if self.one_pass(input, mode) {
            let (w, h, side) = (self.width, self.height, input.size);
            let len = w as usize * h as usize * 3;
            let crop = geometry::source_rect(w, h, side, mode);
            self.resampler.tensor_into(Picture { pixels: &self.pixels[..len], width: w, height: h }, crop, side, channel_map(input), out);
            return;
        }
        let pixels = self.resized(input.size, mode);
        normalise_into(pixels, input, out);
    }

    /// The decoded picture (or its `mode` crop) resized to `side` × `side` (interleaved RGB), in
    /// this thread's buffer. The crop is part of the resize: only the cropped region is read.
    pub fn resized(&mut self, side: u32, mode: ResizeMode) -> &[u8] {
        let (w, h) = (self.width, self.height);
        let src_len = w as usize * h as usize * 3;
        if w == side && h == side && mode == ResizeMode::Stretch {
            return &self.pixels[..src_len];
        }
        let crop = geometry::source_rect(w, h, side, mode);
        let options = self.options.crop(crop.x, crop.y, crop.w, crop.h);
        let dst_len = side as usize * side as usize * 3;
        self.resized.resize(dst_len, 0);
        let src = fir::images::ImageRef::new(w, h, &self.pixels[..src_len], fir::PixelType::U8x3).expect("decoded buffer matches its size");
        let mut dst = fir::images::Image::from_slice_u8(side, side, &mut self.resized[..dst_len], fir::PixelType::U8x3)
            .expect("resize buffer matches the model input");
        self.resizer.resize(&src, &mut dst, &options).expect("same pixel type on both sides");
        &self.resized[..dst_len]
    }

    /// A copy of the decoded picture (tests, tools).
    pub fn image(&self) -> RgbImage {
        let len = self.width as usize * self.height as usize * 3;
        RgbImage::from_raw(self.width, self.height, self.pixels[..len].to_vec()).expect("buffer matches its size")
    }
}

fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageError> {
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageError::TooLarge { width, height, max: max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Decode(format!("image has zero size ({width}x{height})")));
    }
    Ok(())
}

/// Width and height as a PNG's IHDR chunk states them (it must come first, right after the
/// 8-byte signature); `None` when the bytes do not start that way.
fn png_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(8..24).filter(|c| &c[4..8] == b"IHDR")?;
    Some((u32::from_be_bytes(ihdr[8..12].try_into().ok()?), u32::from_be_bytes(ihdr[12..16].try_into().ok()?)))
}

/// The largest DCT scale-down (1, 2, 4 or 8) that keeps the shorter side at least `min_side`.
pub fn dct_scale(width: u32, height: u32, min_side: u32) -> u32 {
    let short = width.min(height);
    [8, 4, 2].into_iter().find(|&f| min_side > 0 && short / f >= min_side).unwrap_or(1)
}

/// Source channel for each model channel.
fn source_order(input: &InputSpec) -> [usize; 3] {
    match input.channels {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    }
}

/// For each source channel (R, G, B): the model's plane it goes to, and `v × (1/std) − mean/std`
/// of that model channel.
fn channel_map(input: &InputSpec) -> ChannelMap {
    channel_map_of(input, source_order(input))
}

fn channel_map_of(input: &InputSpec, order: [usize; 3]) -> ChannelMap {
    let mut map = ChannelMap { plane: [0; 3], scale: [0.0; 3], bias: [0.0; 3] };
    for (model_channel, &src) in order.iter().enumerate() {
        map.plane[src] = model_channel;
        map.scale[src] = 1.0 / input.std[model_channel];
        map.bias[src] = -input.mean[model_channel] / input.std[model_channel];
    }
    map
}

/// `(pixel − mean) / std` per channel, in the model's channel order and layout.
///
/// NCHW (both ladders' layout) on a CPU with AVX2 takes [`planes_avx2`]: one pass that reads
/// each pixel once and writes the three planes, `v × (1/std) − mean/std` per value, which the
/// compiler vectorises (the stride-3 reads become byte shuffles). 3.3–3.8× faster than the
/// table below (128 px: 7.5 against 27 µs; 224 px: 24 against 79–90 µs, a standalone loop on
/// this project's 2-core machine in a slow phase), and equal to it within 1e-6 (two roundings
/// instead of one: 2.4e-7 at most in that loop, one ulp at these magnitudes;
/// `the_fast_planes_match_the_table`).
///
/// Otherwise a 256-entry table per channel: one load per value instead of a subtract and a
/// multiply. The tensor is written by `extend` rather than zero-filled and then overwritten: for
/// NCHW that is three passes over the (cache-resident) pixels, one per plane, each a plain
/// sequential store — 37 % faster than one pass writing three planes into a zeroed buffer (24 vs
/// 38 µs at 128 × 128), with identical output. Without AVX2 the compiler does not vectorise the
/// one-pass form, and it was slower than the table (35 against 29 µs).
pub fn normalise_into(pixels: &[u8], input: &InputSpec, out: &mut Vec<f32>) {
    let order = source_order(input);
    #[cfg(target_arch = "x86_64")]
    if input.layout == Layout::Nchw && std::is_x86_feature_detected!("avx2") {
        normalise_planes(pixels, input, order, out);
        return;
    }
    normalise_table(pixels, input, order, out);
}

/// The table path of [`normalise_into`].
fn normalise_table(pixels: &[u8], input: &InputSpec, order: [usize; 3], out: &mut Vec<f32>) {
    out.clear();
    out.reserve(pixels.len());
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 - input.mean[c]) / input.std[c]));
    match input.layout {
        Layout::Nchw => {
            for (lut, src) in lut.iter().zip(order) {
                out.extend(pixels.chunks_exact(3).map(|px| lut[px[src] as usize]));
            }
        }
        Layout::Nhwc => {
            out.extend(
                pixels
                    .chunks_exact(3)
                    .flat_map(|px| [lut[0][px[order[0]] as usize], lut[1][px[order[1]] as usize], lut[2][px[order[2]] as usize]]),
            );
        }
    }
}

/// The NCHW tensor in one pass (see [`normalise_into`]); only called where AVX2 is present.
#[cfg(target_arch = "x86_64")]
fn normalise_planes(pixels: &[u8], input: &InputSpec, order: [usize; 3], out: &mut Vec<f32>) {
    let n = pixels.len() / 3;
    // Resizing without clearing first: the buffer is reused request after request, so it is
    // only zeroed where it grows, never rewritten twice.
    out.resize(3 * n, 0.0);
    let (first, rest) = out.split_at_mut(n);
    let (second, third) = rest.split_at_mut(n);
    let mut by_model = [Some(first), Some(second), Some(third)];
    let map = channel_map_of(input, order);
    let [Some(a), Some(b), Some(c)] = map.plane.map(|p| by_model[p].take()) else {
        unreachable!("order is a permutation of the three channels")
    };
    // SAFETY: the caller checked that this CPU has AVX2.
    unsafe { planes_avx2(&pixels[..3 * n], map.scale, map.bias, [a, b, c]) }
}

/// Writes source channel k of every pixel to `planes[k]`, as `v × scale[k] + bias[k]`. Plain
/// Rust, compiled for AVX2: 16 pixels a step is what the vectoriser turns into shuffles and
/// 8-wide arithmetic; the last (< 16) pixels go one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn planes_avx2(pixels: &[u8], scale: [f32; 3], bias: [f32; 3], [a, b, c]: [&mut [f32]; 3]) {
    const STEP: usize = 16;
    let whole = pixels.len() / (3 * STEP) * STEP;
    let chunks = pixels.chunks_exact(3 * STEP).zip(a.chunks_exact_mut(STEP)).zip(b.chunks_exact_mut(STEP)).zip(c.chunks_exact_mut(STEP));
    for (((px, a), b), c) in chunks {
        for i in 0..STEP {
            a[i] = px[3 * i] as f32 * scale[0] + bias[0];
            b[i] = px[3 * i + 1] as f32 * scale[1] + bias[1];
            c[i] = px[3 * i + 2] as f32 * scale[2] + bias[2];
        }
    }
    for i in whole..pixels.len() / 3 {
        a[i] = pixels[3 * i] as f32 * scale[0] + bias[0];
        b[i] = pixels[3 * i + 1] as f32 * scale[1] + bias[1];
        c[i] = pixels[3 * i + 2] as f32 * scale[2] + bias[2];
    }
}

/// Normalises a picture already at the model's input size (one-off; benchmarks compare paths).
pub fn to_tensor_unresized(img: &RgbImage, input: &InputSpec) -> Vec<f32> {
    let mut out = Vec::new();
    normalise_into(img.as_raw(), input, &mut out);
    out
}

/// Mean |a − b| of two tensors of one model input, on the 0–255 pixel scale.
pub fn mean_abs_diff_tensors(a: &[f32], b: &[f32], input: &InputSpec) -> f64 {
    let std = input.std.iter().map(|v| *v as f64).sum::<f64>() / 3.0;
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.len().max(1) as f64 * std
}

/// Decodes a JPEG or PNG at full size (a one-off [`Preprocessor`]; tools, tests, fuzzing).
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let mut p = Preprocessor::new();
    p.decode(bytes, max_pixels, 0)?;
    Ok(p.image())
}

/// Resizes to the model's input side and lays the pixels out as the model expects (one-off).
pub fn to_tensor(img: &RgbImage, input: &InputSpec) -> Vec<f32> {
    let mut p = Preprocessor::new();
    p.load(img);
    let mut out = Vec::new();
    p.tensor_into(input, ResizeMode::Stretch, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    fn textured(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x ^ y) * 3 % 256) as u8]))
    }

    fn jpeg_of(img: &RgbImage) -> Vec<u8> {
        let mut jpg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg).unwrap();
        jpg
    }

    fn spec(layout: Layout, channels: ChannelOrder, size: u32) -> InputSpec {
        InputSpec { name: "input".into(), size, layout, channels, mean: [0.0; 3], std: [1.0; 3] }
    }

    #[test]
    fn decodes_png_and_jpeg() {
        assert_eq!(decode(&png(7, 5), 1000).unwrap().dimensions(), (7, 5));
        assert_eq!(decode(&jpeg_of(&RgbImage::new(16, 8)), 1000).unwrap().dimensions(), (16, 8));
    }

    #[test]
    fn jpeg_decode_matches_the_image_crate() {
        let jpg = jpeg_of(&textured(64, 48));
        let ours = decode(&jpg, 1 << 20).unwrap();
        let theirs = image::load_from_memory(&jpg).unwrap().into_rgb8();
        assert_eq!(ours.dimensions(), theirs.dimensions());
        let mad = mean_abs_diff(ours.as_raw(), theirs.as_raw());
        assert!(mad < 1.0, "zune-jpeg and the image crate disagree by {mad} on average");
    }

    #[test]
    fn refuses_bad_input_clearly() {
        assert_eq!(decode(b"", 10), Err(ImageError::Empty));
        assert_eq!(decode(b"hello, not an image", 10), Err(ImageError::UnsupportedFormat));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(decode(gif, 10), Err(ImageError::UnsupportedFormat));
        let p = png(8, 8);
        assert!(matches!(decode(&p[..p.len() / 2], 1000), Err(ImageError::Decode(_))));
        let j = jpeg_of(&textured(32, 32));
        assert!(matches!(decode(&j[..j.len() / 2], 1 << 20), Err(ImageError::Decode(_))));
    }

    #[test]
    fn pixel_cap_is_checked_from_the_header() {
        // A PNG header claiming 100000 x 100000 with no pixel data: refused without decoding.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&p, 16_777_216).unwrap_err();
        assert_eq!(err, ImageError::TooLarge { width: 100_000, height: 100_000, max: 16_777_216 });
        assert!(err.to_string().contains("10000000000 pixels"));
    }

    #[test]
    fn jpeg_pixel_cap_holds_on_the_scaled_path_too() {
        // 1024x1024 would be decoded at 1/8 scale for a 64 px model; the cap is still on the full size.
        let j = jpeg_of(&textured(1024, 1024));
        let mut p = Preprocessor::new();
        let err = p.decode(&j, 1000 * 1000, 64).unwrap_err();
        assert_eq!(err, ImageError::TooLarge { width: 1024, height: 1024, max: 1_000_000 });
    }

    #[test]
    fn large_jpegs_decode_at_reduced_scale_never_below_the_model_side() {
        assert_eq!(dct_scale(1024, 768, 224), 2);
        assert_eq!(dct_scale(4032, 3024, 224), 8);
        assert_eq!(dct_scale(448, 448, 224), 2);
        assert_eq!(dct_scale(447, 1000, 224), 1);
        assert_eq!(dct_scale(224, 224, 224), 1);
        assert_eq!(dct_scale(1000, 1000, 0), 1);
        let img = textured(1000, 800);
        let j = jpeg_of(&img);
        let mut p = Preprocessor::new();
        p.decode(&j, 1 << 24, 224).unwrap();
        assert_eq!(p.dimensions(), (500, 400));
        // The scaled picture is the full one shrunk: close to a resize of the full decode.
        let mut full = Preprocessor::new();
        full.decode(&j, 1 << 24, 0).unwrap();
        let s = spec(Layout::Nhwc, ChannelOrder::Rgb, 128);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.tensor_into(&s, ResizeMode::Stretch, &mut a);
        full.tensor_into(&s, ResizeMode::Stretch, &mut b);
        let mad = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        assert!(mad < 12.0, "scaled decode differs by {mad} per value on a 0..255 scale");
    }

    #[test]
    fn tensor_layouts() {
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([10 * (x + 2 * y) as u8, 1, 2]));
        let nchw = to_tensor(&img, &spec(Layout::Nchw, ChannelOrder::Rgb, 2));
        assert_eq!(nchw, vec![0.0, 10.0, 20.0, 30.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
        let nhwc = to_tensor(&img, &spec(Layout::Nhwc, ChannelOrder::Bgr, 2));
        assert_eq!(&nhwc[..6], &[2.0, 1.0, 0.0, 2.0, 1.0, 10.0]);
    }

    #[test]
    fn resizes_and_normalises() {
        let img = RgbImage::from_pixel(50, 30, image::Rgb([255, 0, 127]));
        let s = InputSpec { mean: [127.5; 3], std: [127.5; 3], ..spec(Layout::Nchw, ChannelOrder::Rgb, 8) };
        let t = to_tensor(&img, &s);
        assert_eq!(t.len(), 3 * 64);
        assert!((t[0] - 1.0).abs() < 1e-6 && (t[64] + 1.0).abs() < 1e-6 && t[128].abs() < 0.01);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_fast_planes_match_the_table() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: the one-pass path is never taken here");
            return;
        }
        // ImageNet's statistics, both channel orders, and sizes with and without a tail under
        // 16 pixels. One buffer throughout, as a worker reuses it: it shrinks and grows.
        let imagenet = |channels| InputSpec { mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375], ..spec(Layout::Nchw, channels, 0) };
        let mut fast = vec![f32::NAN; 10];
        for (w, h) in [(224, 224), (7, 5), (33, 17), (16, 1), (128, 128)] {
            let px = textured(w, h).into_raw();
            for channels in [ChannelOrder::Rgb, ChannelOrder::Bgr] {
                let s = imagenet(channels);
                let order = if channels == ChannelOrder::Rgb { [0, 1, 2] } else { [2, 1, 0] };
                let mut table = Vec::new();
                normalise_table(&px, &s, order, &mut table);
                normalise_planes(&px, &s, order, &mut fast);
                assert_eq!(fast.len(), table.len(), "{w}x{h}");
                let worst = fast.iter().zip(&table).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= 1e-6, "{w}x{h} {channels:?}: off by {worst}");
                // And the public entry point takes this path.
                let mut public = Vec::new();
                normalise_into(&px, &s, &mut public);
                assert_eq!(public, fast);
            }
        }
    }
    pub(crate) fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.len().max(1) as f64
    }

    #[test]
    fn resize_matches_the_image_crate_within_rounding() {
        // The filter did not change (triangle = bilinear convolution); only the arithmetic did.
        let img = textured(224, 224);
        for side in [192, 160, 128, 96] {
            let theirs = image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle);
            let mut p = Preprocessor::new();
            p.load(&img);
            let mut t = Vec::new();
            p.tensor_into(&spec(Layout::Nhwc, ChannelOrder::Rgb, side), ResizeMode::Stretch, &mut t);
            let ours: Vec<u8> = t.iter().map(|v| *v as u8).collect();
            let mad = mean_abs_diff(&ours, theirs.as_raw());
            assert!(mad < 1.5, "{side} px: mean absolute difference {mad}");
        }
    }

    fn one_pass_runs_here() -> bool {
        let runs = Resampler::available();
        if !runs {
            eprintln!("skipped: this CPU lacks AVX2 or FMA, so the one-pass path never runs");
        }
        runs
    }

    /// The one-pass resize + normalise against fast_image_resize + normalise, on every shape the
    /// plans must handle: down and up, crops, sides not a multiple of 4, pictures narrower than
    /// the filter, BGR and a real mean/std.
    #[test]
    fn one_pass_matches_the_two_pass_path() {
        if !one_pass_runs_here() {
            return;
        }
        let imagenet = InputSpec { mean: [123.7, 116.3, 103.5], std: [58.4, 57.1, 57.4], ..spec(Layout::Nchw, ChannelOrder::Bgr, 0) };
        let cases = [
            (224, 224, 128, ResizeMode::Stretch),
            (224, 224, 96, ResizeMode::Stretch),
            (224, 224, 192, ResizeMode::CenterCrop),
            (300, 160, 64, ResizeMode::CenterCrop),
            (160, 300, 130, ResizeMode::CenterCrop),
            (50, 40, 96, ResizeMode::Stretch),
            (224, 224, 33, ResizeMode::Stretch),
            (97, 61, 7, ResizeMode::Stretch),
            (1, 1, 8, ResizeMode::Stretch),
            (2, 3, 5, ResizeMode::Stretch),
            (3, 1, 4, ResizeMode::CenterCrop),
        ];
        for (w, h, side, mode) in cases {
            let img = textured(w, h);
            for input in [spec(Layout::Nchw, ChannelOrder::Rgb, side), InputSpec { size: side, ..imagenet.clone() }] {
                let (mut one, mut two) = (Preprocessor::new(), Preprocessor::new().two_pass());
                one.load(&img);
                two.load(&img);
                assert!(one.one_pass(&input, mode) && !two.one_pass(&input, mode));
                let (mut a, mut b) = (Vec::new(), Vec::new());
                one.tensor_into(&input, mode, &mut a);
                two.tensor_into(&input, mode, &mut b);
                assert_eq!(a.len(), 3 * side as usize * side as usize);
                assert_eq!(a.len(), b.len());
                // On the 0–255 scale: the two-pass path rounds to whole values twice (after each
                // pass), so they may differ by up to one grey level, by ~0.3 on average.
                let n = side as usize * side as usize;
                let worst = (0..a.len()).map(|i| (a[i] - b[i]).abs() * input.std[i / n]).fold(0.0f32, f32::max);
                let mean = mean_abs_diff_tensors(&a, &b, &input);
                assert!(worst <= 1.01, "{w}x{h} → {side} {mode:?}: worst difference {worst}");
                assert!(mean < 0.4, "{w}x{h} → {side} {mode:?}: mean difference {mean}");
            }
        }
    }

    /// Random geometries (pictures 1–300 px a side, tensors 1–260, both resize modes, both
    /// channel orders), each against the two-pass path: the plans' edge cases are where reads
    /// could stray, and `Plan::new` asserts they do not.
    #[test]
    fn one_pass_matches_the_two_pass_path_on_random_geometries() {
        if !one_pass_runs_here() {
            return;
        }
        let mut rng = crate::rng::SplitMix64::new(7);
        let mut one = Preprocessor::new();
        let mut two = Preprocessor::new().two_pass();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let (w, h) = (1 + (rng.next_u64() % 300) as u32, 1 + (rng.next_u64() % 300) as u32);
            let side = 1 + (rng.next_u64() % 260) as u32;
            let mode = if rng.next_u64() & 1 == 0 { ResizeMode::Stretch } else { ResizeMode::CenterCrop };
            let order = if rng.next_u64() & 1 == 0 { ChannelOrder::Rgb } else { ChannelOrder::Bgr };
            let input = spec(Layout::Nchw, order, side);
            let img = textured(w, h);
            one.load(&img);
            two.load(&img);
            one.tensor_into(&input, mode, &mut a);
            two.tensor_into(&input, mode, &mut b);
            assert_eq!(a.len(), b.len());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1.01, "{w}x{h} → {side} {mode:?}: worst difference {worst}");
        }
    }

    #[test]
    fn one_pass_keeps_a_flat_picture_flat_and_reuses_its_plans() {
        if !one_pass_runs_here() {
            return;
        }
        let img = RgbImage::from_pixel(211, 157, image::Rgb([10, 128, 250]));
        let input = InputSpec { mean: [127.5; 3], std: [127.5; 3], ..spec(Layout::Nchw, ChannelOrder::Bgr, 100) };
        let mut p = Preprocessor::new();
        p.load(&img);
        let mut t = Vec::new();
        // Twice: the second call runs on the plan the first one made.
        for _ in 0..2 {
            p.tensor_into(&input, ResizeMode::CenterCrop, &mut t);
            let n = 100 * 100;
            // BGR: plane 0 is blue.
            for (plane, v) in [(0, 250.0), (1, 128.0), (2, 10.0)] {
                let want = (v - 127.5) / 127.5;
                assert!(t[plane * n..(plane + 1) * n].iter().all(|x| (x - want).abs() < 1e-5), "plane {plane}");
            }
        }
    }

    #[test]
    fn center_crop_matches_crop_then_resize() {
        // 300x160: the central 140x140 (160 x 0.875, at 80,10: whole pixels) scaled to 64 equals
        // cropping first.
        let img = textured(300, 160);
        let s = spec(Layout::Nhwc, ChannelOrder::Rgb, 64);
        let mut p = Preprocessor::new();
        p.load(&img);
        let mut ours = Vec::new();
        p.tensor_into(&s, ResizeMode::CenterCrop, &mut ours);
        let cut = geometry::upright_crop(img, 1, 64, ResizeMode::CenterCrop);
        assert_eq!(cut.dimensions(), (140, 140));
        let theirs = to_tensor(&cut, &s);
        let mad = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
        assert!(mad < 2.0, "crop in the resize vs crop first: {mad}");
    }

    #[test]
    fn exif_orientation_is_applied_on_decode() {
        let img = textured(40, 20);
        let jpg = geometry::with_exif_orientation(&jpeg_of(&img), 6);
        let mut p = Preprocessor::new();
        p.decode(&jpg, 1 << 20, 0).unwrap();
        // Orientation 6: stored sideways, shown rotated 90° clockwise: width and height swap.
        assert_eq!(p.dimensions(), (20, 40));
    }

    #[test]
    fn buffers_are_reused_across_sizes() {
        let mut p = Preprocessor::new();
        let mut t = Vec::new();
        for (w, side) in [(300, 224), (100, 160), (224, 224), (50, 96)] {
            p.load(&textured(w, w));
            p.tensor_into(&spec(Layout::Nchw, ChannelOrder::Rgb, side), ResizeMode::Stretch, &mut t);
            assert_eq!(t.len(), (side * side * 3) as usize);
        }
    }
}
