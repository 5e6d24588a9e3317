//! The crate's one non-cryptographic hash: 64-bit FNV-1a.
//!
//! It names things, it does not protect them: it seeds each initial weight
//! tensor from its name, and it recognises the same model or AOI file
//! between the parts of a split run. Changing it changes every seeded model
//! and every recorded digest.

/// FNV-1a's 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a's 64-bit prime, `2^40 + 2^8 + 0xb3`.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental FNV-1a hasher: feeding bytes in pieces gives the hash of
/// their concatenation, so a file can be hashed in reads of any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Fnv1a {
    /// A hasher that has seen no bytes.
    pub const fn new() -> Self {
        Fnv1a(FNV_OFFSET)
    }

    /// A hasher continuing from the hash `state` of the bytes fed so far
    /// (what [`finish`](Self::finish) returned), so a hash can be stored
    /// and extended later.
    pub const fn resume(state: u64) -> Self {
        Fnv1a(state)
    }

    /// Feeds `bytes`.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = bytes
            .iter()
            .fold(self.0, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME));
    }

    /// The hash of the bytes fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a::new()
    }
}

/// FNV-1a of `bytes` in one call.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 499, 1000] {
            let mut h = Fnv1a::default();
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            assert_eq!(h.finish(), fnv1a(&data));
        }
    }
}
