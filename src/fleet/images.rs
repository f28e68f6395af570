//! The fleet's images: one JPEG per resolution of the ladder, encoded once and shared by every
//! client (`Bytes` is reference-counted, so a thousand clients hold one copy).
//!
//! Synthetic images are textured like photos (gradients, overlapping shapes, stripes, sensor
//! noise) so their JPEG sizes per resolution, which drive the emulated uplink, resemble those of
//! real photos; a flat image would compress to almost nothing and hide the bandwidth bottleneck.

use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

use super::config::{FleetConfig, Subsampling};
use crate::rng::SplitMix64;

/// Scenes to cycle through: clients start on different ones, so the server does not see one
/// image over and over.
pub const SYNTHETIC_SCENES: usize = 4;

#[derive(Debug, Clone)]
pub struct ImageSet {
    /// `encoded[scene][level]`: JPEG bytes of that scene at the ladder's `level`-th resolution.
    encoded: Vec<Vec<Bytes>>,
}

/// How the images are encoded: JPEG quality (1–100) and chroma subsampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub quality: u8,
    pub subsampling: Subsampling,
}

impl Encoding {
    pub fn of(cfg: &FleetConfig) -> Self {
        Self { quality: cfg.jpeg_quality, subsampling: cfg.jpeg_subsampling }
    }
}

impl ImageSet {
    /// What the fleet configured by `cfg` sends, at `resolutions`: the photos in `cfg.images`,
    /// or the synthetic scenes when that is empty.
    pub fn for_fleet(cfg: &FleetConfig, resolutions: &[u16]) -> Result<Self> {
        match cfg.images.as_os_str().is_empty() {
            true => Self::synthetic(resolutions, Encoding::of(cfg)),
            false => Self::from_dir(&cfg.images, resolutions, Encoding::of(cfg)),
        }
    }

    pub fn synthetic(resolutions: &[u16], enc: Encoding) -> Result<Self> {
        let side = *resolutions.first().context("empty resolution ladder")? as u32;
        let scenes = (0..SYNTHETIC_SCENES as u64).map(|seed| scene(side, seed)).collect::<Vec<_>>();
        Self::encode_all(&scenes, resolutions, enc)
    }

    /// The user's photos (`--images DIR`: every JPEG and PNG in it), centre-cropped to a square
    /// and scaled to each resolution.
    pub fn from_dir(dir: &Path, resolutions: &[u16], enc: Encoding) -> Result<Self> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read image folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
                matches!(ext.as_str(), "jpg" | "jpeg" | "png")
            })
            .collect();
        paths.sort();
        if paths.is_empty() {
            bail!("no JPEG or PNG images in {}", dir.display());
        }
        let photos = paths
            .iter()
            .map(|p| Ok(square(image::open(p).with_context(|| format!("cannot decode {}", p.display()))?.into_rgb8())))
            .collect::<Result<Vec<_>>>()?;
        Self::encode_all(&photos, resolutions, enc)
    }

    fn encode_all(sources: &[RgbImage], resolutions: &[u16], enc: Encoding) -> Result<Self> {
        let encoded = sources
            .iter()
            .map(|src| {
                resolutions
                    .iter()
                    .map(|&r| {
                        let img = image::imageops::resize(src, r as u32, r as u32, FilterType::Triangle);
                        jpeg(&img, enc)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { encoded })
    }

    /// Image `n` (any number: they cycle) at ladder `level`.
    pub fn get(&self, n: usize, level: usize) -> Bytes {
        self.encoded[n % self.encoded.len()][level].clone()
    }

    pub fn count(&self) -> usize {
        self.encoded.len()
    }

    /// Mean JPEG size at each level, bytes: what the uplink carries per request.
    pub fn mean_bytes(&self) -> Vec<usize> {
        let levels = self.encoded[0].len();
        (0..levels).map(|l| self.encoded.iter().map(|e| e[l].len()).sum::<usize>() / self.encoded.len()).collect()
    }
}

/// Baseline JPEG with the standard (Annex K) tables scaled to `enc.quality`, as a client's
/// libjpeg would write it.
fn jpeg(img: &RgbImage, enc: Encoding) -> Result<Bytes> {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, enc.quality);
    e.set_sampling_factor(match enc.subsampling {
        Subsampling::S420 => SamplingFactor::R_4_2_0,
        Subsampling::S422 => SamplingFactor::R_4_2_2,
        Subsampling::S444 => SamplingFactor::R_4_4_4,
    });
    let (w, h) = (u16::try_from(img.width())?, u16::try_from(img.height())?);
    e.encode(img.as_raw(), w, h, ColorType::Rgb)?;
    Ok(out.into())
}

/// Centre crop to the largest square, as a camera app framing the object would.
fn square(img: RgbImage) -> RgbImage {
    let side = img.width().min(img.height());
    let (x, y) = ((img.width() - side) / 2, (img.height() - side) / 2);
    image::imageops::crop_imm(&img, x, y, side, side).to_image()
}

/// A random colour, 0–255 per channel.
fn colour(rng: &mut SplitMix64) -> [f32; 3] {
    [rng.unit() * 255.0, rng.unit() * 255.0, rng.unit() * 255.0]
}

enum Shape {
    Disc { cx: f32, cy: f32, r: f32 },
    Rect { x0: f32, y0: f32, x1: f32, y1: f32 },
}

impl Shape {
    fn contains(&self, x: f32, y: f32) -> bool {
        match *self {
            Shape::Disc { cx, cy, r } => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Shape::Rect { x0, y0, x1, y1 } => (x0..x1).contains(&x) && (y0..y1).contains(&y),
        }
    }
}

/// A repeatable `side`×`side` scene: a gradient sky, a dozen overlapping shapes, some striped
/// like fabric or foliage, then sensor noise.
fn scene(side: u32, seed: u64) -> RgbImage {
    let mut rng = SplitMix64::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xED6E);
    let (top, bottom) = (colour(&mut rng), colour(&mut rng));
    let shapes: Vec<(Shape, [f32; 3], f32)> = (0..12)
        .map(|_| {
            let (a, b, c) = (rng.unit(), rng.unit(), rng.unit());
            let shape = if rng.next_u64().is_multiple_of(2) {
                Shape::Disc { cx: a, cy: b, r: 0.05 + 0.2 * c }
            } else {
                Shape::Rect { x0: a - 0.25 * c, y0: b - 0.15, x1: a + 0.25 * c, y1: b + 0.1 + 0.2 * c }
            };
            // Stripe frequency in cycles per image side; 0: a plain fill with shading only.
            let stripes = if rng.next_u64().is_multiple_of(3) { 4.0 + 20.0 * rng.unit() } else { 0.0 };
            (shape, colour(&mut rng), stripes)
        })
        .collect();
    let mut img = RgbImage::new(side, side);
    let s = side as f32;
    for (px, py, pixel) in img.enumerate_pixels_mut() {
        let (x, y) = (px as f32 / s, py as f32 / s);
        let mut c = [0f32; 3];
        for (ch, v) in c.iter_mut().enumerate() {
            *v = top[ch] + (bottom[ch] - top[ch]) * y;
        }
        for (shape, colour, stripes) in &shapes {
            if shape.contains(x, y) {
                let shade = 0.75 + 0.25 * x;
                let stripe = if *stripes > 0.0 { 0.8 + 0.2 * (x * stripes * std::f32::consts::TAU).sin() } else { 1.0 };
                for (ch, v) in c.iter_mut().enumerate() {
                    *v = colour[ch] * shade * stripe;
                }
            }
        }
        let noise = (rng.unit() - 0.5) * 24.0;
        *pixel = Rgb(c.map(|v| (v + noise).clamp(0.0, 255.0) as u8));
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENC80: Encoding = Encoding { quality: 80, subsampling: Subsampling::S444 };

    #[test]
    fn synthetic_images_decode_at_every_resolution_and_shrink_with_it() {
        let set = ImageSet::synthetic(&[224, 160, 96], Encoding { quality: 75, subsampling: Subsampling::S420 }).unwrap();
        assert_eq!(set.count(), SYNTHETIC_SCENES);
        for (level, side) in [224u32, 160, 96].into_iter().enumerate() {
            let img = image::load_from_memory(&set.get(1, level)).unwrap();
            assert_eq!((img.width(), img.height()), (side, side));
        }
        let sizes = set.mean_bytes();
        assert!(sizes.windows(2).all(|w| w[0] > w[1]), "{sizes:?}");
        // Textured like a photo: a 224-px JPEG at quality 75 of a real scene is ~8–20 kB; a flat
        // image would be ~1 kB.
        assert!(sizes[0] > 6_000, "{sizes:?}");
    }

    /// (horizontal, vertical) sampling factors of each component, from the JPEG's SOF0 header.
    fn sampling_factors(jpg: &[u8]) -> Vec<(u8, u8)> {
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline frame header");
        let n = jpg[sof + 9] as usize;
        (0..n).map(|c| jpg[sof + 11 + 3 * c]).map(|f| (f >> 4, f & 15)).collect()
    }

    #[test]
    fn subsampling_is_what_the_config_says() {
        let enc = |subsampling| ImageSet::synthetic(&[224], Encoding { quality: 75, subsampling }).unwrap();
        let (s420, s422, s444) = (enc(Subsampling::S420), enc(Subsampling::S422), enc(Subsampling::S444));
        assert_eq!(sampling_factors(&s420.get(0, 0)), [(2, 2), (1, 1), (1, 1)]);
        assert_eq!(sampling_factors(&s422.get(0, 0)), [(2, 1), (1, 1), (1, 1)]);
        assert_eq!(sampling_factors(&s444.get(0, 0)), [(1, 1), (1, 1), (1, 1)]);
        assert_eq!([Subsampling::S420, Subsampling::S422, Subsampling::S444].map(|s| s.to_string()), ["4:2:0", "4:2:2", "4:4:4"]);
        // Less colour data, fewer bytes; and the same picture once decoded, up to the chroma's
        // lower resolution.
        let (small, full) = (s420.mean_bytes()[0], s444.mean_bytes()[0]);
        assert!(small < full, "4:2:0 {small} bytes, 4:4:4 {full}");
        let a = image::load_from_memory(&s420.get(2, 0)).unwrap().into_rgb8();
        let b = image::load_from_memory(&s444.get(2, 0)).unwrap().into_rgb8();
        let mad = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.as_raw().len() as f64;
        assert!(mad < 8.0, "mean absolute difference {mad}");
    }

    #[test]
    fn scenes_are_repeatable_and_distinct() {
        assert_eq!(scene(32, 1), scene(32, 1));
        assert_ne!(scene(32, 1), scene(32, 2));
    }

    #[test]
    fn photos_are_cropped_and_scaled() {
        let dir = tempfile::tempdir().unwrap();
        scene(300, 9).save(dir.path().join("a.png")).unwrap();
        image::imageops::resize(&scene(300, 3), 300, 200, FilterType::Nearest).save(dir.path().join("b.jpg")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let set = ImageSet::from_dir(dir.path(), &[128, 64], ENC80).unwrap();
        assert_eq!(set.count(), 2);
        let img = image::load_from_memory(&set.get(1, 1)).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        let empty = tempfile::tempdir().unwrap();
        assert!(ImageSet::from_dir(empty.path(), &[64], ENC80).unwrap_err().to_string().contains("no JPEG or PNG"));
    }
}
