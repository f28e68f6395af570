//! Resize and normalise in one pass, for the NCHW tensors both ladders take, on x86-64 CPUs with
//! AVX2 and FMA: the hot path's replacement for fast_image_resize followed by a separate
//! normalise pass. [`crate::engine::preprocess`] falls back to those two elsewhere (other CPUs,
//! NHWC models).
//!
//! Why our own: for the fleet's 224 px pictures into the cheapest model (128 px) fast_image_resize
//! rebuilt its filter coefficients on every call (~30 % of its time; its API has no way to keep
//! them), its horizontal pass over interleaved RGB took about two thirds of the rest, and it wrote
//! `u8` pixels that the normalise pass then read again. Here the coefficients are computed once
//! per (picture size, crop, side) and kept, both passes work in `f32` on every lane, and the
//! second pass writes the normalised planes directly. Measured on this project's 2-core machine
//! (`edgeinfer bench overhead`, which times both paths on the same pictures; README): the
//! resize + normalise stage for 224 → 128 takes 0.55× the two passes' time, ~61 against ~91 µs
//! when the machine runs fast.
//!
//! **The filter is unchanged**: bilinear (triangle) convolution, the kernel widened by the
//! downscale ratio, taps clipped to the picture and weights normalised to sum 1 — fast_image_resize's
//! `precompute_coefficients`, term for term, crop included. What differs is arithmetic: `f32`
//! weights and sums instead of its fixed point, and no rounding to whole `u8` values between the
//! passes and before normalising. The two agree within one grey level at every pixel and ~0.3 of
//! one on average (`one_pass_matches_the_two_pass_path` in `engine::preprocess`).
//!
//! The passes, for an output of side × side:
//! 1. **Vertical** (rows first: fewer output rows than input rows, so the wider second pass runs
//!    on fewer rows): each output row is Σₖ wₖ × source row (start + k), over only the columns the
//!    second pass reads, in `f32`. 32 values a step in four 8-lane accumulators that stay in
//!    registers across the taps, one store per step.
//! 2. **Horizontal + normalise**: eight output pixels at a time, two to an 8-lane accumulator,
//!    each pixel as 4 lanes holding R, G, B and the next pixel's R (computed and dropped: an
//!    unaligned 4-float load at every 3-float pixel is cheaper than shuffling three floats out),
//!    summed over a fixed number of taps (zero weights pad the shorter ones, so the loop has no
//!    branches). A 4 × 4 transpose in each half turns the eight pixels into eight values of each
//!    plane, which are scaled, biased and stored.

use crate::models::geometry::Rect;

/// One axis's filter: for each output position, the first input position it reads and `taps`
/// weights (zero-padded past the real ones).
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    start: Vec<u32>,
    /// Real (non-padding) taps per output position.
    len: Vec<u32>,
    weights: Vec<f32>,
    /// Weights per output position in `weights`.
    taps: usize,
}

/// fast_image_resize's `precompute_coefficients` for the bilinear filter (support 1, adaptive
/// kernel size): output position `o` covers input `[in0, in1)` scaled by `out / (in1 − in0)`;
/// its centre is `in0 + (o + 0.5) × scale`, its taps are the input positions within `radius` of
/// the centre and inside `[0, in_size)`, weighted by the triangle `1 − |x − centre| / radius`,
/// normalised to sum 1, leading and trailing zero weights dropped.
fn axis(in_size: u32, in0: f64, in1: f64, out: u32) -> Axis {
    let scale = (in1 - in0) / out as f64;
    let radius = scale.max(1.0);
    let taps = radius.ceil() as usize * 2 + 1;
    let mut a =
        Axis { start: Vec::with_capacity(out as usize), len: Vec::with_capacity(out as usize), weights: vec![0.0; taps * out as usize], taps };
    let mut w = Vec::with_capacity(taps);
    for o in 0..out as usize {
        let centre = in0 + (o as f64 + 0.5) * scale;
        let lo = (centre - radius).floor().max(0.0) as u32;
        let hi = ((centre + radius).ceil().min(in_size as f64) as u32).max(lo);
        w.clear();
        w.extend((lo..hi).map(|x| (1.0 - ((x as f64 - (centre - 0.5)) / radius).abs()).max(0.0)));
        let first = w.iter().position(|&v| v != 0.0);
        let (first, last) = match first {
            Some(f) => (f, w.iter().rposition(|&v| v != 0.0).map_or(f, |l| l + 1)),
            // A centre outside the picture (a crop past its edge): the nearest pixel.
            None => {
                let nearest = (centre.floor().max(0.0) as u32).min(in_size - 1);
                a.start.push(nearest);
                a.len.push(1);
                a.weights[o * taps] = 1.0;
                continue;
            }
        };
        let sum: f64 = w[first..last].iter().sum();
        a.start.push(lo + first as u32);
        a.len.push((last - first) as u32);
        for (k, v) in w[first..last].iter().enumerate() {
            a.weights[o * taps + k] = (v / sum) as f32;
        }
    }
    a
}

/// Everything that depends only on the geometry, kept across requests.
#[derive(Debug, Clone)]
struct Plan {
    /// (width, height, side, crop as bits): what this plan was made for.
    key: (u32, u32, u32, [u64; 4]),
    vertical: Axis,
    /// First source column the horizontal pass reads, and how many.
    first_col: usize,
    cols: usize,
    /// Horizontal taps per output pixel (all padded to this many) and each pixel's first column,
    /// relative to `first_col`, moved left where needed so that all taps stay inside `cols`.
    taps: usize,
    hstart: Vec<u32>,
    /// Horizontal weights, eight pixels to a block: `[block][tap][j of 4][pixel j, pixel j + 4]
    /// [lane of 4]`, each weight repeated across the 4 lanes it multiplies. Pixels past `side` in
    /// the last block have zero weights.
    hweights: Vec<f32>,
}

impl Plan {
    fn new(width: u32, height: u32, crop: Rect, side: u32) -> Plan {
        let vertical = axis(height, crop.y, crop.y + crop.h, side);
        let h = axis(width, crop.x, crop.x + crop.w, side);
        let n = side as usize;
        let first_col = h.start[0] as usize;
        let end = (0..n).map(|o| (h.start[o] + h.len[o]) as usize).max().unwrap_or(first_col + 1);
        let cols = end - first_col;
        // No more taps than columns: a picture narrower than the filter reads every column it has.
        let taps = h.taps.min(cols);
        let blocks = n.div_ceil(8);
        let mut hstart = vec![0u32; blocks * 8];
        let mut hweights = vec![0.0f32; blocks * taps * 32];
        for (o, slot) in hstart[..n].iter_mut().enumerate() {
            let real = h.start[o] as usize - first_col;
            let start = real.min(cols - taps);
            *slot = start as u32;
            // Pixel o is lane group `half` of accumulator `j` in its block of 8 (see `horizontal`).
            let (block, j, half) = (o / 8, o % 4, o % 8 / 4);
            for k in 0..h.len[o] as usize {
                let at = ((block * taps + (real - start + k)) * 4 + j) * 8 + half * 4;
                hweights[at..at + 4].fill(h.weights[o * h.taps + k]);
            }
        }
        // The passes read only where these allow (their safety rests on it); checked once per plan.
        assert!(first_col + cols <= width as usize && taps <= cols, "horizontal taps outside the picture");
        assert!(hstart.iter().all(|&s| s as usize + taps <= cols), "horizontal taps outside the picture");
        assert!(vertical.start.iter().zip(&vertical.len).all(|(&s, &l)| s + l <= height), "vertical taps outside the picture");
        Plan { key: (width, height, side, bits(crop)), vertical, first_col, cols, taps, hstart, hweights }
    }

    /// Floats per row of the intermediate: the row's `cols` pixels, then room for the 4th lane
    /// of the last pixel's 4-float load.
    fn stride(&self) -> usize {
        self.cols * 3 + 4
    }
}

fn bits(r: Rect) -> [u64; 4] {
    [r.x.to_bits(), r.y.to_bits(), r.w.to_bits(), r.h.to_bits()]
}

/// Plans kept per thread: a worker sees a handful of geometries (the clients' resolutions × the
/// ladder's input sides), so a short list searched linearly is enough.
const PLANS: usize = 32;

/// Per-thread state: the kept plans and the intermediate rows.
#[derive(Debug, Default)]
pub struct Resampler {
    plans: Vec<Plan>,
    rows: Vec<f32>,
}

/// A decoded RGB picture: `width × height × 3` bytes, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Picture<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
}

/// The normalisation of each *source* channel (R, G, B): the model plane it goes to, and
/// `v × scale + bias` with which it gets there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelMap {
    pub plane: [usize; 3],
    pub scale: [f32; 3],
    pub bias: [f32; 3],
}

impl Resampler {
    /// Whether this CPU runs [`Resampler::tensor_into`]; the caller takes the two-pass path otherwise.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Resizes the `crop` of `src` to `side` × `side` and writes the three normalised planes into
    /// `out` (NCHW, resized to 3 × side²). Only call where [`Resampler::available`] says so.
    pub fn tensor_into(&mut self, src: Picture, crop: Rect, side: u32, map: ChannelMap, out: &mut Vec<f32>) {
        let Picture { pixels: src, width, height } = src;
        assert!(Self::available(), "resample needs AVX2 and FMA");
        assert!(width > 0 && height > 0 && side > 0, "empty picture or tensor");
        assert!(src.len() >= width as usize * height as usize * 3, "picture buffer shorter than its size");
        let key = (width, height, side, bits(crop));
        let at = match self.plans.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                if self.plans.len() == PLANS {
                    self.plans.remove(0);
                }
                self.plans.push(Plan::new(width, height, crop, side));
                self.plans.len() - 1
            }
        };
        let plan = &self.plans[at];
        let n = side as usize * side as usize;
        self.rows.resize(plan.stride() * side as usize, 0.0);
        out.resize(3 * n, 0.0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present (asserted above); the buffers were sized above for
        // this plan, and the plan's positions stay inside the picture (see the passes).
        unsafe {
            x86::vertical(plan, src, width as usize, &mut self.rows);
            x86::horizontal(plan, &self.rows, side as usize, map, out);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ChannelMap, Plan};

    /// Pass 1: `rows[y]` = Σₖ w × source row (start(y) + k), columns `first_col ..` + `cols`.
    ///
    /// # Safety
    /// AVX2 and FMA present; `src` holds `width × height × 3` bytes with the plan's rows and
    /// columns inside; `rows` holds `stride × side` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vertical(plan: &Plan, src: &[u8], width: usize, rows: &mut [f32]) {
        let v = &plan.vertical;
        let values = plan.cols * 3;
        let src_stride = width * 3;
        let base = src.as_ptr().add(plan.first_col * 3);
        let steps = values / 32;
        let stride = plan.stride();
        for y in 0..v.start.len() {
            let out = rows.as_mut_ptr().add(y * stride);
            let first = v.start[y] as usize;
            let taps = v.len[y] as usize;
            let w = &v.weights[y * v.taps..y * v.taps + taps];
            for s in 0..steps {
                let off = s * 32;
                let (mut a0, mut a1, mut a2, mut a3) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
                for (k, &wk) in w.iter().enumerate() {
                    let p = base.add((first + k) * src_stride + off);
                    let wk = _mm256_set1_ps(wk);
                    a0 = _mm256_fmadd_ps(wk, widen(p), a0);
                    a1 = _mm256_fmadd_ps(wk, widen(p.add(8)), a1);
                    a2 = _mm256_fmadd_ps(wk, widen(p.add(16)), a2);
                    a3 = _mm256_fmadd_ps(wk, widen(p.add(24)), a3);
                }
                _mm256_storeu_ps(out.add(off), a0);
                _mm256_storeu_ps(out.add(off + 8), a1);
                _mm256_storeu_ps(out.add(off + 16), a2);
                _mm256_storeu_ps(out.add(off + 24), a3);
            }
            for i in steps * 32..values {
                let mut a = 0.0f32;
                for (k, &wk) in w.iter().enumerate() {
                    a = wk.mul_add(*base.add((first + k) * src_stride + i) as f32, a);
                }
                *out.add(i) = a;
            }
        }
    }

    /// Eight `u8` at `p` as eight `f32`.
    #[inline(always)]
    unsafe fn widen(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// Pass 2: eight output pixels at a time from `rows`, normalised into the planes of `out`.
    ///
    /// # Safety
    /// AVX2 and FMA present; `rows` filled by [`vertical`] for this plan; `out` holds 3 × side².
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn horizontal(plan: &Plan, rows: &[f32], side: usize, map: ChannelMap, out: &mut [f32]) {
        let n = side * side;
        let taps = plan.taps;
        let stride = plan.stride();
        let planes = [out.as_mut_ptr().add(map.plane[0] * n), out.as_mut_ptr().add(map.plane[1] * n), out.as_mut_ptr().add(map.plane[2] * n)];
        let scale = map.scale.map(|v| _mm256_set1_ps(v));
        let bias = map.bias.map(|v| _mm256_set1_ps(v));
        for y in 0..side {
            let row = rows.as_ptr().add(y * stride);
            for block in 0..side.div_ceil(8) {
                let x = block * 8;
                let w = plan.hweights.as_ptr().add(block * taps * 32);
                // Accumulator j holds pixel j in its low half and pixel j + 4 in its high half.
                // Each pixel's taps are 3 floats apart, its first at 3 × start.
                let lo = [0, 1, 2, 3].map(|j| row.add(plan.hstart[x + j] as usize * 3));
                let hi = [0, 1, 2, 3].map(|j| row.add(plan.hstart[x + 4 + j] as usize * 3));
                let mut a = [_mm256_setzero_ps(); 4];
                for k in 0..taps {
                    let wk = w.add(k * 32);
                    for j in 0..4 {
                        let px = _mm256_loadu2_m128(hi[j].add(3 * k), lo[j].add(3 * k));
                        a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(wk.add(8 * j)), px, a[j]);
                    }
                }
                // In each 128-bit half, [R G B ·] of four pixels → [R R R R], [G …], [B …]: the
                // low halves give pixels 0–3 of each plane, the high halves pixels 4–7.
                let rg01 = _mm256_unpacklo_ps(a[0], a[1]);
                let rg23 = _mm256_unpacklo_ps(a[2], a[3]);
                let b01 = _mm256_unpackhi_ps(a[0], a[1]);
                let b23 = _mm256_unpackhi_ps(a[2], a[3]);
                let channels =
                    [_mm256_shuffle_ps::<0x44>(rg01, rg23), _mm256_shuffle_ps::<0xEE>(rg01, rg23), _mm256_shuffle_ps::<0x44>(b01, b23)];
                let at = y * side + x;
                let whole = side - x >= 8;
                for c in 0..3 {
                    let v = _mm256_fmadd_ps(channels[c], scale[c], bias[c]);
                    if whole {
                        _mm256_storeu_ps(planes[c].add(at), v);
                    } else {
                        let mut tail = [0.0f32; 8];
                        _mm256_storeu_ps(tail.as_mut_ptr(), v);
                        std::ptr::copy_nonoverlapping(tail.as_ptr(), planes[c].add(at), side - x);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_stay_in_the_picture() {
        for (size, out, crop) in [
            (224, 128, (0.0, 224.0)),
            (224, 96, (0.0, 224.0)),
            (100, 224, (0.0, 100.0)),
            (300, 64, (80.0, 140.0)),
            (1, 5, (0.0, 1.0)),
            (3, 2, (0.0, 3.0)),
        ] {
            let a = axis(size, crop.0, crop.0 + crop.1, out);
            assert_eq!(a.start.len(), out as usize);
            for o in 0..out as usize {
                let w = &a.weights[o * a.taps..(o + 1) * a.taps];
                let sum: f32 = w.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{size} → {out}, pixel {o}: weights sum to {sum}");
                assert!(w.iter().all(|&v| v >= 0.0));
                assert!(a.start[o] + a.len[o] <= size, "{size} → {out}, pixel {o} reads past the picture");
                assert!(a.len[o] as usize <= a.taps && a.len[o] >= 1);
            }
        }
        // 224 → 128: the kernel is widened by 224 / 128 = 1.75, so at most 2 × 2 + 1 taps.
        assert_eq!(axis(224, 0.0, 224.0, 128).taps, 5);
        // Same size: each output is its own input, weight 1.
        let same = axis(64, 0.0, 64.0, 64);
        assert!((0..64).all(|o| same.start[o] == o as u32 && same.len[o] == 1 && same.weights[o * same.taps] == 1.0));
    }
}
