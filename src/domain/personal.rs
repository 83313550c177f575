//! Personal data, hashed on ingest the way ad platforms require (SPEC §3):
//! `user_data` match keys and the top-level property keys `email` and
//! `phone` are normalized and SHA-256'd before anything is stored, logged or
//! broadcast. A value that already is 64 hex characters is taken as a hash
//! and kept as sent. Keys are stored under Meta's short names (`em`, `ph`,
//! …), so a destination can forward them as they are.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Largest `user_data` object after hashing, in bytes of JSON text.
pub const MAX_USER_DATA_BYTES: usize = 8 * 1024;

/// How a match key's value is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    /// Normalized, then SHA-256.
    Hash(Normalize),
    /// Not personal by itself (a browser cookie id, a user agent): kept.
    Keep,
    /// Never stored (the client's IP address).
    Drop,
}

/// Meta's normalization per key, before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Normalize {
    /// Trimmed and lower-cased (email, names, gender).
    Lower,
    /// Digits only (phone, date of birth).
    Digits,
    /// Lower-cased, spaces removed, cut at the first dash (postal code:
    /// `12345-6789` is `12345`).
    Postal,
    /// Lower-cased without digits, spaces, periods, dashes or parentheses
    /// (city, state).
    Location,
    /// Lower-cased letters a–z only (a two-letter country code).
    Letters,
    /// Trimmed only (external ids).
    Trim,
}

/// The accepted match keys: (accepted names, stored name, treatment).
const MATCH_KEYS: &[(&[&str], &str, Treatment)] = &[
    (&["em", "email"], "em", Treatment::Hash(Normalize::Lower)),
    (&["ph", "phone"], "ph", Treatment::Hash(Normalize::Digits)),
    (
        &["fn", "first_name"],
        "fn",
        Treatment::Hash(Normalize::Lower),
    ),
    (
        &["ln", "last_name"],
        "ln",
        Treatment::Hash(Normalize::Lower),
    ),
    (&["ge", "gender"], "ge", Treatment::Hash(Normalize::Lower)),
    (
        &["db", "date_of_birth"],
        "db",
        Treatment::Hash(Normalize::Digits),
    ),
    (&["ct", "city"], "ct", Treatment::Hash(Normalize::Location)),
    (&["st", "state"], "st", Treatment::Hash(Normalize::Location)),
    (
        &["zp", "zip", "postal_code"],
        "zp",
        Treatment::Hash(Normalize::Postal),
    ),
    (&["country"], "country", Treatment::Hash(Normalize::Letters)),
    (
        &["external_id"],
        "external_id",
        Treatment::Hash(Normalize::Trim),
    ),
    (
        &["client_ip_address", "ip"],
        "client_ip_address",
        Treatment::Drop,
    ),
    (&["client_user_agent"], "client_user_agent", Treatment::Keep),
    (&["fbc"], "fbc", Treatment::Keep),
    (&["fbp"], "fbp", Treatment::Keep),
    (&["subscription_id"], "subscription_id", Treatment::Keep),
    (&["fb_login_id"], "fb_login_id", Treatment::Keep),
    (&["lead_id"], "lead_id", Treatment::Keep),
    (&["anon_id"], "anon_id", Treatment::Keep),
    (&["madid"], "madid", Treatment::Keep),
    (&["page_id"], "page_id", Treatment::Keep),
    (
        &["page_scoped_user_id"],
        "page_scoped_user_id",
        Treatment::Keep,
    ),
    (&["ctwa_clid"], "ctwa_clid", Treatment::Keep),
    (&["ig_account_id"], "ig_account_id", Treatment::Keep),
    (&["ig_sid"], "ig_sid", Treatment::Keep),
];

/// Property keys hashed like `user_data` wherever they appear at the top level.
const HASHED_PROPERTIES: &[(&str, Normalize)] =
    &[("email", Normalize::Lower), ("phone", Normalize::Digits)];

/// Why a `user_data` object was refused; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidUserData(pub String);

/// Hashes a `user_data` object into its stored form (keys by Meta's short
/// names; values strings, or arrays of strings for several values). An
/// unknown key is refused: it could carry clear text nobody hashes.
pub fn hash_user_data(input: &Map<String, Value>) -> Result<Map<String, Value>, InvalidUserData> {
    let mut out = Map::new();
    for (key, value) in input {
        let (_, stored, treatment) = MATCH_KEYS
            .iter()
            .find(|(names, _, _)| names.contains(&key.as_str()))
            .ok_or_else(|| {
                InvalidUserData(format!(
                    "user_data.{key} is not a match key (em, ph, fn, ln, ge, db, ct, st, zp, \
                     country, external_id, client_user_agent, fbc, fbp, …)"
                ))
            })?;
        let stored_value = match treatment {
            Treatment::Drop => continue,
            Treatment::Keep => keep(key, value)?,
            Treatment::Hash(n) => hash_value(key, value, *n)?,
        };
        if let Some(v) = stored_value {
            add_value(&mut out, stored, v);
        }
    }
    Ok(out)
}

/// Hashes the top-level `email` and `phone` property keys in place.
/// Values that are neither strings nor numbers become `null`: whatever
/// they hold, it is not stored in clear.
pub fn hash_personal_properties(props: &mut Map<String, Value>) {
    for (key, normalize) in HASHED_PROPERTIES {
        if let Some(v) = props.get_mut(*key) {
            *v = scalar_text(v)
                .and_then(|t| hash_text(&t, *normalize))
                .map_or(Value::Null, Value::String);
        }
    }
}

/// Whether an object has a key that [`hash_personal_properties`] rewrites.
pub fn has_personal_properties(props: &Map<String, Value>) -> bool {
    HASHED_PROPERTIES
        .iter()
        .any(|(k, _)| props.contains_key(*k))
}

/// Stores `v` under `key`; a key sent twice (`email` and `em`) keeps both
/// values, as a list without repeats.
fn add_value(out: &mut Map<String, Value>, key: &str, v: Value) {
    let Some(old) = out.remove(key) else {
        out.insert(key.to_owned(), v);
        return;
    };
    let mut all: Vec<Value> = Vec::new();
    for item in [old, v] {
        match item {
            Value::Array(items) => all.extend(items),
            one => all.push(one),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    all.retain(|v| seen.insert(v.to_string()));
    out.insert(
        key.to_owned(),
        if all.len() == 1 {
            all.remove(0)
        } else {
            Value::Array(all)
        },
    );
}

fn keep(key: &str, value: &Value) -> Result<Option<Value>, InvalidUserData> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(_) => Ok(Some(value.clone())),
        Value::Number(n) => Ok(Some(Value::String(n.to_string()))),
        _ => Err(InvalidUserData(format!("user_data.{key} must be a string"))),
    }
}

fn hash_value(key: &str, value: &Value, n: Normalize) -> Result<Option<Value>, InvalidUserData> {
    let one = |v: &Value| -> Result<Option<String>, InvalidUserData> {
        match v {
            Value::Null => Ok(None),
            other => {
                let text = scalar_text(other).ok_or_else(|| {
                    InvalidUserData(format!(
                        "user_data.{key} must be a string or a list of strings"
                    ))
                })?;
                Ok(hash_text(&text, n))
            }
        }
    };
    match value {
        Value::Array(items) => {
            let hashed = items
                .iter()
                .map(one)
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((!hashed.is_empty()).then(|| Value::from(hashed)))
        }
        v => Ok(one(v)?.map(Value::String)),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// SHA-256 (lower-case hex) of the normalized text, the way Meta's own
/// SDK normalizes each key; a text that already is 64 hex characters
/// (around any spaces) is a hash and is kept, trimmed. `None` when nothing
/// is left once normalized (a hash of "" would match nobody).
fn hash_text(text: &str, n: Normalize) -> Option<String> {
    if is_sha256_hex(text.trim()) {
        return Some(text.trim().to_owned());
    }
    let lower = || text.trim().to_lowercase();
    let normalized: String = match n {
        Normalize::Lower => lower(),
        Normalize::Digits => text.chars().filter(char::is_ascii_digit).collect(),
        Normalize::Postal => {
            let compact: String = lower().chars().filter(|c| !c.is_whitespace()).collect();
            compact.split('-').next().unwrap_or_default().to_owned()
        }
        Normalize::Location => lower()
            .chars()
            .filter(|c| !c.is_ascii_digit() && !c.is_whitespace() && !".-()".contains(*c))
            .collect(),
        Normalize::Letters => lower().chars().filter(char::is_ascii_lowercase).collect(),
        Normalize::Trim => text.trim().to_owned(),
    };
    (!normalized.is_empty()).then(|| hex::encode(Sha256::digest(normalized.as_bytes())))
}

/// Whether `s` is exactly 64 hexadecimal characters.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The normalization of an email (for callers outside this module, e.g. tests).
pub fn hash_email(email: &str) -> String {
    hash_text(email, Normalize::Lower).unwrap_or_default()
}

/// The normalization of a phone number.
pub fn hash_phone(phone: &str) -> String {
    hash_text(phone, Normalize::Digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn email_and_phone_are_normalized_then_hashed() {
        let input = json!({"email": "  Jane.Doe@Example.COM ", "ph": "+1 (555) 010-9999",
                           "client_ip_address": "203.0.113.9", "fbp": "fb.1.2.3"});
        let out = hash_user_data(input.as_object().unwrap()).unwrap();
        assert_eq!(out["em"], json!(sha("jane.doe@example.com")));
        assert_eq!(out["ph"], json!(sha("15550109999")));
        assert_eq!(out["fbp"], json!("fb.1.2.3"));
        assert!(!out.contains_key("client_ip_address"), "never stored");
        assert!(!serde_json::to_string(&out).unwrap().contains("Jane"));
    }

    #[test]
    fn a_hash_is_kept_as_sent_and_lists_hash_each_value() {
        let h = sha("x@y.z");
        let out = hash_user_data(json!({"em": [h.clone(), "A@B.c"]}).as_object().unwrap()).unwrap();
        assert_eq!(out["em"], json!([h, sha("a@b.c")]));
        assert_eq!(hash_phone(&"A".repeat(64)), "A".repeat(64));
    }

    #[test]
    fn places_and_countries_are_normalized_as_metas_sdk_does() {
        let input = json!({"ct": " New York ", "st": "N.Y.", "zp": "12345-6789",
                           "country": " U.S. ", "em": format!("  {}  ", sha("a@b.c"))});
        let out = hash_user_data(input.as_object().unwrap()).unwrap();
        assert_eq!(out["ct"], json!(sha("newyork")));
        assert_eq!(out["st"], json!(sha("ny")));
        assert_eq!(out["zp"], json!(sha("12345")));
        assert_eq!(out["country"], json!(sha("us")));
        assert_eq!(
            out["em"],
            json!(sha("a@b.c")),
            "a padded hash is kept, trimmed"
        );
        let uk = hash_user_data(json!({"zp": " SW1A 1AA"}).as_object().unwrap()).unwrap();
        assert_eq!(uk["zp"], json!(sha("sw1a1aa")));
        // Nothing left once normalized: no key, not the hash of "".
        let none = json!({"country": "日本", "ct": "12345", "ph": "n/a"});
        assert!(hash_user_data(none.as_object().unwrap())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_key_sent_under_both_names_keeps_both_values() {
        let input = json!({"email": "A@B.com", "em": "X@Y.com", "phone": "1", "ph": "1"});
        let out = hash_user_data(input.as_object().unwrap()).unwrap();
        // In key order: `em` before `email`.
        assert_eq!(out["em"], json!([sha("x@y.com"), sha("a@b.com")]));
        assert_eq!(out["ph"], json!(sha("1")), "the same value once");
    }

    #[test]
    fn unknown_or_malformed_keys_are_refused() {
        let err = hash_user_data(json!({"address": "1 Main St"}).as_object().unwrap());
        assert!(err.unwrap_err().0.contains("user_data.address"));
        assert!(hash_user_data(json!({"em": {"a": 1}}).as_object().unwrap()).is_err());
        assert!(
            hash_user_data(json!({"em": null, "ph": ""}).as_object().unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn personal_properties_are_hashed_in_place() {
        let mut props = json!({"email": "A@B.com", "phone": 5550100, "total": 3})
            .as_object()
            .unwrap()
            .clone();
        assert!(has_personal_properties(&props));
        hash_personal_properties(&mut props);
        assert_eq!(props["email"], json!(sha("a@b.com")));
        assert_eq!(props["phone"], json!(sha("5550100")));
        assert_eq!(props["total"], json!(3));
        let mut odd = json!({"email": ["a@b.c"]}).as_object().unwrap().clone();
        hash_personal_properties(&mut odd);
        assert_eq!(odd["email"], Value::Null);
    }

    proptest::proptest! {
        #[test]
        fn hashed_keys_never_keep_the_clear_text(email in "[a-zA-Z0-9.]{1,20}@[a-z]{1,10}\\.[a-z]{2,3}", phone in "[0-9 +()-]{3,20}") {
            let out = hash_user_data(serde_json::json!({"email": email, "phone": phone}).as_object().unwrap()).unwrap();
            let text = serde_json::to_string(&out).unwrap();
            proptest::prop_assert!(!text.contains(&email));
            proptest::prop_assert!(is_sha256_hex(out["em"].as_str().unwrap()));
        }
    }
}
