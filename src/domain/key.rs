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
        Self::from_digest(&h.finalize())
    }

    /// Fingerprints a secondary key: `property` = `value` of an event named
    /// `event_name` (SPEC §3). The marker where an id's length would stand
    /// (ids are at most 256 bytes) keeps it apart from every id key.
    pub fn secondary(site_id: u32, event_name: &str, property: &str, value: &str) -> Self {
        let mut h = Sha256::new();
        h.update(site_id.to_le_bytes());
        h.update((event_name.len() as u32).to_le_bytes());
        h.update(event_name.as_bytes());
        h.update(u32::MAX.to_le_bytes());
        h.update((property.len() as u32).to_le_bytes());
        h.update(property.as_bytes());
        h.update((value.len() as u32).to_le_bytes());
        h.update(value.as_bytes());
        Self::from_digest(&h.finalize())
    }

    fn from_digest(d: &[u8]) -> Self {
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

/// The text of a secondary-key property: a string as it is, a number or a
/// boolean as its JSON text (so `42` and `"42"` are the same order); `None`
/// for a missing, empty, null, object or array value.
pub fn secondary_value(
    properties: &serde_json::Map<String, serde_json::Value>,
    property: &str,
) -> Option<String> {
    match properties.get(property)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
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
    fn secondary_keys_compare_values_as_text_and_never_meet_id_keys() {
        let props = |j: &str| serde_json::from_str::<serde_json::Map<_, _>>(j).unwrap();
        assert_eq!(
            secondary_value(&props(r#"{"o":42}"#), "o").as_deref(),
            Some("42")
        );
        assert_eq!(
            secondary_value(&props(r#"{"o":"42"}"#), "o").as_deref(),
            Some("42")
        );
        assert_eq!(secondary_value(&props(r#"{"o":""}"#), "o"), None);
        assert_eq!(secondary_value(&props(r#"{"o":[1]}"#), "o"), None);
        assert_eq!(secondary_value(&props(r#"{}"#), "o"), None);
        let s = KeyHash::secondary(1, "order.completed", "order_id", "42");
        assert_eq!(
            s,
            KeyHash::secondary(1, "order.completed", "order_id", "42")
        );
        assert_ne!(s, KeyHash::secondary(1, "order.refunded", "order_id", "42"));
        assert_ne!(
            s,
            KeyHash::secondary(1, "order.completed", "order_i", "d42")
        );
        assert_ne!(s, KeyHash::of(1, "order.completed", "42"));
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
