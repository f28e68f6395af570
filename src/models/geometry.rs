//! Where in a photo a model looks: the crop its evaluation protocol takes before scaling to the
//! input size, and the EXIF orientation a camera left for the viewer to apply.
//!
//! Pure functions, so the request path can call them in whatever order it decodes and resizes.
//! The intended order: read the orientation from the original bytes, decode, [`apply_orientation`]
//! (phones store portrait photos sideways and say so in EXIF: a model fed the stored pixels sees
//! a cat lying on its side), then [`source_rect`] on the upright size, crop, scale to size×size.

use image::metadata::Orientation;
use image::RgbImage;
use serde::Deserialize;

/// How an image becomes the model's square input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// The whole image, squeezed to size×size (aspect ratio not kept). Cheapest; what the
    /// synthetic ladder has always done.
    #[default]
    Stretch,
    /// The ImageNet evaluation convention: scale the short side to size / 0.875 (256 for 224),
    /// then take the central size×size square. What published accuracies are measured with.
    CenterCrop,
}

/// ImageNet's crop fraction: 224 / 256.
pub const CROP_FRACTION: f64 = 0.875;

/// A rectangle of the source image, in pixels (fractional: a crop is scaled anyway).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    /// The nearest whole-pixel rectangle (x, y, w, h), inside a `width`×`height` image and at
    /// least one pixel in each direction, for croppers that take integers.
    pub fn to_pixels(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let w = (self.w.round() as u32).clamp(1, width.max(1));
        let h = (self.h.round() as u32).clamp(1, height.max(1));
        let x = (self.x.round() as u32).min(width.saturating_sub(w));
        let y = (self.y.round() as u32).min(height.saturating_sub(h));
        (x, y, w, h)
    }
}

/// The part of a `width`×`height` image that is scaled to the model's `side`×`side` input.
///
/// `CenterCrop` is exactly "short side to side / 0.875, then the central side×side": that
/// central square, mapped back to the source, is a square of `min(w, h) × 0.875` source pixels
/// around the centre; scaling only that region gives the same pixels with less work. The
/// result does not depend on `side`, which is kept in the signature because other protocols'
/// crops do (e.g. TF's fixed 32-pixel padding).
pub fn source_rect(width: u32, height: u32, _side: u32, mode: ResizeMode) -> Rect {
    let (w, h) = (f64::from(width), f64::from(height));
    match mode {
        ResizeMode::Stretch => Rect { x: 0.0, y: 0.0, w, h },
        ResizeMode::CenterCrop => {
            let s = w.min(h) * CROP_FRACTION;
            Rect { x: (w - s) / 2.0, y: (h - s) / 2.0, w: s, h: s }
        }
    }
}

/// The EXIF orientation (1–8) of a JPEG, read from its APP1 "Exif" segment; 1 (upright) when
/// the bytes are not a JPEG, carry no EXIF, or the value is invalid. Only the headers before the
/// first scan are looked at, so this costs next to nothing beside a decode.
pub fn exif_orientation(jpeg: &[u8]) -> u8 {
    exif_chunk(jpeg).and_then(Orientation::from_exif_chunk).map_or(1, Orientation::to_exif)
}

/// The TIFF structure inside a JPEG's APP1 "Exif\0\0" segment.
fn exif_chunk(jpeg: &[u8]) -> Option<&[u8]> {
    if !jpeg.starts_with(&[0xff, 0xd8]) {
        return None;
    }
    let mut at = 2;
    while at + 4 <= jpeg.len() {
        if jpeg[at] != 0xff {
            return None;
        }
        let marker = jpeg[at + 1];
        // Fill bytes (0xff 0xff) may precede a marker.
        if marker == 0xff {
            at += 1;
            continue;
        }
        // Start of scan or end of image: the metadata segments are all before.
        if marker == 0xda || marker == 0xd9 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        let body = jpeg.get(at + 4..at + 2 + len)?;
        if marker == 0xe1 {
            if let Some(tiff) = body.strip_prefix(b"Exif\0\0") {
                return Some(tiff);
            }
        }
        at += 2 + len;
    }
    None
}

/// Turns an image as stored into the image as it should be seen, for an EXIF orientation 1–8
/// (other values leave it as is). 5–8 swap width and height.
pub fn apply_orientation(img: RgbImage, exif: u8) -> RgbImage {
    use image::imageops::{flip_horizontal, flip_vertical, rotate180, rotate270, rotate90};
    match Orientation::from_exif(exif) {
        None | Some(Orientation::NoTransforms) => img,
        Some(Orientation::FlipHorizontal) => flip_horizontal(&img),
        Some(Orientation::Rotate180) => rotate180(&img),
        Some(Orientation::FlipVertical) => flip_vertical(&img),
        Some(Orientation::Rotate90FlipH) => flip_horizontal(&rotate90(&img)),
        Some(Orientation::Rotate90) => rotate90(&img),
        Some(Orientation::Rotate270FlipH) => flip_horizontal(&rotate270(&img)),
        Some(Orientation::Rotate270) => rotate270(&img),
    }
}

/// The image a model of input side `side` should see: `img` (as decoded) turned upright by its
/// EXIF `orientation`, then cut to the [`source_rect`] of `mode`. What is left is scaled to
/// side×side as before. `Stretch` of an upright image returns it untouched, without a copy.
pub fn upright_crop(img: RgbImage, orientation: u8, side: u32, mode: ResizeMode) -> RgbImage {
    let img = apply_orientation(img, orientation);
    if mode == ResizeMode::Stretch {
        return img;
    }
    let (width, height) = img.dimensions();
    let (x, y, w, h) = source_rect(width, height, side, mode).to_pixels(width, height);
    image::imageops::crop_imm(&img, x, y, w, h).to_image()
}

/// A JPEG's bytes with an APP1 Exif segment carrying `orientation` inserted after SOI, as a
/// phone camera writes it (little-endian TIFF, one IFD0 entry). For tests and demos.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0"); // little-endian TIFF header
    tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 right after it
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry:
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation,
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT,
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count 1,
    tiff.extend_from_slice(&u32::from(orientation).to_le_bytes()); // value, padded
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let len = (2 + 6 + tiff.len()) as u16;
    let mut out = Vec::with_capacity(jpeg.len() + len as usize + 2);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn stretch_takes_the_whole_image() {
        assert_eq!(source_rect(640, 480, 224, ResizeMode::Stretch), Rect { x: 0.0, y: 0.0, w: 640.0, h: 480.0 });
    }

    #[test]
    fn center_crop_is_short_side_to_size_over_0875_then_central_square() {
        // 640x480 to 224: short side 480 -> 256, long 640 -> 341.33; the central 224 square
        // starts at (58.67, 16) of the scaled image, i.e. at (110, 30) in source pixels with a
        // side of 224 * 480 / 256 = 420.
        let r = source_rect(640, 480, 224, ResizeMode::CenterCrop);
        let scale = 480.0 / 256.0;
        let expected = Rect { x: (640.0 / scale - 224.0) / 2.0 * scale, y: 16.0 * scale, w: 224.0 * scale, h: 224.0 * scale };
        for (a, b) in [(r.x, expected.x), (r.y, expected.y), (r.w, expected.w), (r.h, expected.h)] {
            assert!((a - b).abs() < 1e-9, "{r:?} vs {expected:?}");
        }
        assert_eq!(r.to_pixels(640, 480), (110, 30, 420, 420));
        // Portrait: the crop is centred vertically.
        assert_eq!(source_rect(300, 500, 260, ResizeMode::CenterCrop).to_pixels(300, 500), (19, 119, 263, 263));
        // A square image loses the same margin on every side.
        assert_eq!(source_rect(256, 256, 224, ResizeMode::CenterCrop).to_pixels(256, 256), (16, 16, 224, 224));
    }

    #[test]
    fn pixel_rect_stays_inside_tiny_images() {
        assert_eq!(source_rect(1, 1, 224, ResizeMode::CenterCrop).to_pixels(1, 1), (0, 0, 1, 1));
        assert_eq!(source_rect(3, 1, 224, ResizeMode::CenterCrop).to_pixels(3, 1), (1, 0, 1, 1));
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::new(w, h).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
        out
    }

    #[test]
    fn reads_the_orientation_a_camera_wrote() {
        let plain = jpeg(4, 2);
        assert_eq!(exif_orientation(&plain), 1);
        for o in 1..=8 {
            let tagged = with_exif_orientation(&plain, o);
            assert_eq!(exif_orientation(&tagged), o);
            // The image crate's own decoder agrees, and the tagged file still decodes.
            let mut dec = image::ImageReader::new(Cursor::new(&tagged)).with_guessed_format().unwrap().into_decoder().unwrap();
            assert_eq!(image::ImageDecoder::orientation(&mut dec).unwrap().to_exif(), o);
        }
        // Big-endian TIFF ("MM"), as some cameras write.
        let mut be = with_exif_orientation(&plain, 6);
        let tiff = 2 + 4 + 6;
        be[tiff..tiff + 20].copy_from_slice(&[b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6]);
        assert_eq!(exif_orientation(&be), 6);
    }

    #[test]
    fn no_or_bad_exif_means_upright() {
        assert_eq!(exif_orientation(b""), 1);
        assert_eq!(exif_orientation(b"\x89PNG\r\n\x1a\n"), 1);
        assert_eq!(exif_orientation(&with_exif_orientation(&jpeg(2, 2), 9)), 1);
        // A segment length running past the end of a truncated file.
        let t = with_exif_orientation(&jpeg(2, 2), 6);
        assert_eq!(exif_orientation(&t[..20]), 1);
    }

    #[test]
    fn upright_crop_orients_then_crops() {
        // Stored 40x20 sideways (orientation 6): upright it is 20x40, so the crop is a centred
        // 17.5-pixel square of the upright image, not of the stored one.
        let img = RgbImage::new(40, 20);
        assert_eq!(upright_crop(img.clone(), 6, 224, ResizeMode::CenterCrop).dimensions(), (18, 18));
        assert_eq!(upright_crop(img.clone(), 6, 224, ResizeMode::Stretch).dimensions(), (20, 40));
        assert_eq!(upright_crop(img, 1, 224, ResizeMode::Stretch).dimensions(), (40, 20));
    }

    #[test]
    fn orientations_turn_the_stored_image_upright() {
        // Stored 3x2: a red pixel at stored (0,0); where it must end up once shown.
        let stored = RgbImage::from_fn(3, 2, |x, y| if (x, y) == (0, 0) { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 0]) });
        let red_at = |img: &RgbImage| img.enumerate_pixels().find(|p| p.2 .0[0] == 255).map(|p| (p.0, p.1)).unwrap();
        let cases = [
            (1, (3, 2), (0, 0)),
            (2, (3, 2), (2, 0)),
            (3, (3, 2), (2, 1)),
            (4, (3, 2), (0, 1)),
            (5, (2, 3), (0, 0)),
            (6, (2, 3), (1, 0)),
            (7, (2, 3), (1, 2)),
            (8, (2, 3), (0, 2)),
        ];
        for (o, dims, at) in cases {
            let shown = apply_orientation(stored.clone(), o);
            assert_eq!((shown.dimensions(), red_at(&shown)), (dims, at), "orientation {o}");
        }
    }
}
