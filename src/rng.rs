//! SplitMix64 (Steele et al. 2014): the one seeded generator behind the synthetic model weights
//! and the fleet's synthetic pictures. Tiny, fast, and fully specified by integer arithmetic,
//! so what it generates is bit-identical on every platform.

#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator whose state starts at `state`.
    pub fn new(state: u64) -> Self {
        SplitMix64(state)
    }

    /// An independent stream per `stream`, so changing what one stream generates (e.g. one
    /// layer's shape) leaves every other stream's numbers unchanged.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        SplitMix64(seed ^ Self::mix(stream.wrapping_add(1).wrapping_mul(Self::GAMMA)))
    }

    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        Self::mix(self.0)
    }

    /// Uniform in `[0, 1)`: the top 24 bits fill an f32 mantissa exactly.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `[-bound, bound)`. Uniform rather than Gaussian because a Box–Muller transform
    /// needs `ln`/`cos`, whose last bit differs between libms; here every step is exact or a
    /// correctly rounded IEEE operation.
    pub fn uniform(&mut self, bound: f32) -> f32 {
        (2.0 * self.unit() - 1.0) * bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_outputs() {
        // The reference implementation's first outputs for state 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut a = SplitMix64::for_stream(7, 1);
        let mut b = SplitMix64::for_stream(7, 2);
        assert_ne!(a.next_u64(), b.next_u64());
        let u = SplitMix64::new(1).unit();
        assert!((0.0..1.0).contains(&u));
    }
}
