//! The crate's one random generator: Steele, Lea and Flood's SplitMix64.
//!
//! Small, fast, seedable and the same on every platform, which is all that
//! model initialisation, dropout masks, data augmentation, sampling and the
//! synthetic scenes need (candle's CPU generator cannot be seeded). Not
//! cryptographic.
//!
//! Every stream in the crate is defined by the arithmetic here, so changing
//! any of it changes every seeded model, training run and synthetic scene:
//! the tests pin the first values of the stream and of each derived draw.

use serde::{Deserialize, Serialize};

/// The golden-ratio increment of SplitMix64, `2^64 / φ`.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser: a bijective, well-mixing function of 64 bits,
/// also usable as a stateless hash (`mix(key ^ index)`).
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 stream. Serialisable, so that a generator's state can be
/// saved and a run resumed with the same draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `lo + (hi - lo) · u`: uniform in `[lo, hi)`, or in `(hi, lo]` when
    /// `hi < lo`.
    #[inline]
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in `[lo, hi)`, exactly `lo` when `hi <= lo` (one draw either
    /// way).
    #[inline]
    pub fn range_or_lo(&mut self, lo: f64, hi: f64) -> f64 {
        let u = self.uniform();
        if hi <= lo {
            lo
        } else {
            lo + (hi - lo) * u
        }
    }

    /// Uniform integer in `[0, n)` from all 64 bits (Lemire's
    /// multiply-shift); 0 when `n` is 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform integer in `[0, n)` from the top 32 bits only, for
    /// `0 < n < 2^32`: the draw the synthetic scenes were defined with. It
    /// gives other values than [`SplitMix64::below`].
    #[inline]
    pub fn below32(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// A fair coin (the top bit).
    #[inline]
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// `true` with probability `p`.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// An index drawn with the given (non-negative) weights.
    pub fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut r = self.uniform() * total;
        for (k, w) in weights.iter().enumerate() {
            if r < *w {
                return k;
            }
            r -= w;
        }
        weights.len() - 1
    }

    /// Two independent standard normals (Box-Muller: `r cos t`, `r sin t`).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        (r * t.cos(), r * t.sin())
    }

    /// One standard normal: the first of [`SplitMix64::normal_pair`] (the
    /// same two draws, the sine is not computed).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_the_reference_splitmix64() {
        // The first outputs for seed 0 of the reference C implementation
        // (Vigna's splitmix64.c).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(g.next_u64(), 0x06c4_5d18_8009_454f);
        assert_eq!(mix(GOLDEN), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn draws_are_pinned() {
        // Every seeded output of the crate depends on these; a change here
        // changes models, training runs and scenes.
        let mut g = SplitMix64::new(42);
        let u: Vec<u64> = (0..3).map(|_| g.uniform().to_bits()).collect();
        let mut h = SplitMix64::new(42);
        let v: Vec<u64> = (0..3).map(|_| h.next_u64() >> 11).collect();
        for (a, b) in u.iter().zip(&v) {
            assert_eq!(f64::from_bits(*a), *b as f64 / (1u64 << 53) as f64);
        }
        let mut g = SplitMix64::new(7);
        let (a, b) = g.normal_pair();
        let mut h = SplitMix64::new(7);
        assert_eq!(h.normal().to_bits(), a.to_bits());
        assert!(a.is_finite() && b.is_finite() && a != b);
        let mut g = SplitMix64::new(3);
        let x = g.next_u64();
        let mut h = SplitMix64::new(3);
        assert_eq!(h.below(10), ((x as u128 * 10) >> 64) as u64);
        let mut h = SplitMix64::new(3);
        assert_eq!(h.below32(10), (((x >> 32) * 10) >> 32) as usize);
        let mut h = SplitMix64::new(3);
        assert_eq!(h.coin(), x >> 63 == 1);
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut g = SplitMix64::new(5);
        for _ in 0..1000 {
            assert!(g.uniform() < 1.0);
            assert!(g.below(7) < 7);
            assert!(g.below32(7) < 7);
            let v = g.range(2.0, 3.0);
            assert!((2.0..3.0).contains(&v));
            let v = g.range(3.0, 2.0);
            assert!(v > 2.0 && v <= 3.0);
            assert_eq!(g.range_or_lo(3.0, 2.0), 3.0);
            assert!(g.pick(&[1.0, 0.0, 2.0]) != 1);
        }
        assert_eq!(g.below(0), 0);
        let mut v: Vec<u32> = (0..50).collect();
        g.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut g = SplitMix64::new(9);
        g.next_u64();
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, format!("{{\"state\":{}}}", 9u64.wrapping_add(GOLDEN)));
        let mut h: SplitMix64 = serde_json::from_str(&json).unwrap();
        assert_eq!(g.next_u64(), h.next_u64());
    }
}
