//! The dedup key `(site, event_name, event_id)` as a fixed-width fingerprint.
//!
//! The index and the store keep 96 bits of SHA-256 instead of the strings:
//! fixed width keeps index memory per key small and lets a restart rebuild the
//! index from two integer columns. At ten million keys in a window the chance
//! of any collision is about 10^-15.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};

/// 96-bit fingerprint of a dedup key. Stored as `key_hash` (low 64 bits) and
/// `key_hash2` (high 32 bits) in the `events` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u32; 3]);

impl KeyHash {
    /// Fingerprints `(site_id, event_name, event_id)`, byte for byte.
    /// Lengths are hashed too, so no two different keys share an input.
    pub fn of(site_id: u32, event_name: &str, event_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(site_id.to_le_bytes());
        h.update((event_name.len() as u32).to_le_bytes());
        h.update(event_name.as_bytes());
        h.update((event_id.len() as u32).to_le_bytes());
        h.update(event_id.as_bytes());
        let d = h.finalize();
        let word = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        Self([word(0), word(4), word(8)])
    }

    /// Rebuilds a fingerprint from its two stored columns.
    pub fn from_parts(low: u64, high: u32) -> Self {
        Self([low as u32, (low >> 32) as u32, high])
    }

    /// The low 64 bits (`key_hash` column).
    pub fn low(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }

    /// The high 32 bits (`key_hash2` column).
    pub fn high(self) -> u32 {
        self.0[2]
    }
}

impl Hash for KeyHash {
    /// The key is already uniform: hand 64 of its bits to the hasher as they are.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.low());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let k = KeyHash::of(1, "order.completed", "ord_42");
        assert_eq!(KeyHash::from_parts(k.low(), k.high()), k);
    }

    #[test]
    fn names_ids_and_sites_all_separate_keys() {
        let k = KeyHash::of(1, "a", "b");
        assert_ne!(k, KeyHash::of(1, "b", "a"));
        assert_ne!(k, KeyHash::of(2, "a", "b"));
        assert_ne!(KeyHash::of(1, "ab", ""), KeyHash::of(1, "a", "b"));
        assert_eq!(k, KeyHash::of(1, "a", "b"));
    }
}
