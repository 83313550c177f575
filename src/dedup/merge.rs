//! Property fill-in: keys missing from the kept copy are taken from a later
//! copy, never overwritten (SPEC §3, `first_wins` with `merge`).

use serde_json::{Map, Value};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Folds `incoming`'s top-level keys that `kept` lacks into `kept`.
/// Returns the new JSON text, or `None` when nothing was added.
pub fn fill_missing(kept: Option<&str>, incoming: &str) -> Option<String> {
    let incoming: Map<String, Value> = serde_json::from_str(incoming).ok()?;
    let mut merged: Map<String, Value> = match kept {
        Some(text) => serde_json::from_str(text).ok()?,
        None => Map::new(),
    };
    let before = merged.len();
    for (k, v) in incoming {
        merged.entry(k).or_insert(v);
    }
    (merged.len() > before).then(|| Value::Object(merged).to_string())
}

/// A cheap 26-bit fingerprint of a properties text, as kept in the index:
/// equal texts mean the later copy has nothing to add.
pub fn props_hash(text: Option<&str>) -> u32 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish() as u32 & 0x03ff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_missing_keys_without_overwriting() {
        let merged = fill_missing(Some(r#"{"a":1,"b":2}"#), r#"{"b":9,"c":3}"#).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&merged).unwrap(),
            serde_json::json!({"a":1,"b":2,"c":3})
        );
    }

    #[test]
    fn nothing_new_means_no_write() {
        assert_eq!(fill_missing(Some(r#"{"a":1}"#), r#"{"a":2}"#), None);
        assert_eq!(fill_missing(None, r#"{}"#), None);
        assert_eq!(
            fill_missing(None, r#"{"a":2}"#).as_deref(),
            Some(r#"{"a":2}"#)
        );
    }
}
