//! A site: the unit of tenancy. Its public key goes in the pixel snippet, its
//! secret token authenticates server-side senders, its settings steer dedup.

use chrono_tz::Tz;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// Default dedup window: 48 hours.
pub const DEFAULT_WINDOW_SECS: u32 = 48 * 3600;

/// Which copy of a duplicated event is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupPolicy {
    /// The first copy to arrive is kept (the default).
    #[default]
    FirstWins,
    /// A pixel copy replaces a server copy; a later server copy within 60 s
    /// replaces an earlier server copy.
    PreferPixel,
}

impl DedupPolicy {
    /// The name used in settings and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            DedupPolicy::FirstWins => "first_wins",
            DedupPolicy::PreferPixel => "prefer_pixel",
        }
    }

    /// Parses a policy name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "first_wins" => Some(DedupPolicy::FirstWins),
            "prefer_pixel" => Some(DedupPolicy::PreferPixel),
            _ => None,
        }
    }
}

/// Property names read, in order, for an event's revenue when a site
/// names none: the first one present counts.
pub const DEFAULT_REVENUE_PROPERTIES: [&str; 3] = ["value", "revenue", "total"];

/// Per-site settings that steer ingestion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    /// Dedup window in seconds, from the first copy's arrival.
    pub window_secs: u32,
    /// Which copy wins.
    pub policy: DedupPolicy,
    /// Fill property keys missing from the kept copy from later copies.
    pub merge_properties: bool,
    /// Accepted events per UTC day; `None` is unlimited.
    pub daily_quota: Option<u64>,
    /// Secondary keys: event name → the property whose value is an extra
    /// dedup key for events of that name (SPEC §3).
    pub secondary_keys: BTreeMap<String, String>,
    /// The site's time zone: days, "today" and chart buckets follow it.
    pub timezone: Tz,
    /// Days of events to keep; older events and dropped copies are deleted.
    /// `None` keeps everything.
    pub retain_days: Option<u32>,
    /// The property holding an event's revenue; `None` reads the first of
    /// [`DEFAULT_REVENUE_PROPERTIES`]. The currency is in `currency`.
    pub revenue_property: Option<String>,
}

impl SiteSettings {
    /// The property declared as a secondary key for events named `event_name`.
    pub fn secondary_key(&self, event_name: &str) -> Option<&str> {
        self.secondary_keys.get(event_name).map(String::as_str)
    }

    /// The properties read for revenue, in order.
    pub fn revenue_properties(&self) -> Vec<&str> {
        match &self.revenue_property {
            Some(p) => vec![p.as_str()],
            None => DEFAULT_REVENUE_PROPERTIES.to_vec(),
        }
    }
}

impl Default for SiteSettings {
    fn default() -> Self {
        Self {
            window_secs: DEFAULT_WINDOW_SECS,
            policy: DedupPolicy::FirstWins,
            merge_properties: true,
            daily_quota: None,
            secondary_keys: BTreeMap::new(),
            timezone: Tz::UTC,
            retain_days: None,
            revenue_property: None,
        }
    }
}

/// A registered site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Small numeric id, part of every dedup key.
    pub id: u32,
    /// Unique human name, e.g. `shop`.
    pub name: String,
    /// Public key for the pixel snippet.
    pub site_key: String,
    /// SHA-256 of the API token, hex.
    pub token_hash: String,
    /// Allowed page origins (`scheme://host[:port]`), normalised.
    pub origins: Vec<String>,
    /// Dedup and quota settings.
    pub settings: SiteSettings,
}

impl Site {
    /// Whether `origin` (an `Origin` header or a URL) is one of this site's origins.
    pub fn allows_origin(&self, origin: &str) -> bool {
        normalize_origin(origin).is_ok_and(|o| self.origins.contains(&o))
    }

    /// Whether `token` is this site's API token, compared in constant time.
    pub fn token_matches(&self, token: &str) -> bool {
        self.token_hash_matches(&hash_token(token))
    }

    /// Whether `hash` (from [`hash_token`]) is this site's, in constant time.
    pub fn token_hash_matches(&self, hash: &str) -> bool {
        hash.as_bytes().ct_eq(self.token_hash.as_bytes()).into()
    }
}

/// A fresh secret API token (`tly_` + 32 random bytes, hex).
pub fn new_api_token() -> String {
    format!("tly_{}", random_hex(32))
}

/// A fresh public site key (`site_` + 8 random bytes, hex).
pub fn new_site_key() -> String {
    format!("site_{}", random_hex(8))
}

/// The stored form of an API token: SHA-256, hex. Tokens are 256 random bits,
/// so a fast hash is enough; the point is that a leaked file leaks no token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh visitor salt (32 random bytes, hex).
pub fn new_salt() -> String {
    random_hex(32)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Why an origin or site name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Normalises an origin or a URL to `scheme://host[:port]`, lower-case, with
/// the default port dropped; e.g. `HTTPS://Shop.example:443/x` → `https://shop.example`.
pub fn normalize_origin(input: &str) -> Result<String, InvalidInput> {
    let bad = || {
        InvalidInput(format!(
            "{input:?} is not an origin; write it as scheme://host[:port], e.g. https://shop.example.com"
        ))
    };
    let (scheme, rest) = input.trim().split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if authority.is_empty() {
        return Err(bad());
    }
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Ok(format!("{scheme}://{authority}"))
}

/// Checks a site name: 1–64 characters of letters, digits, `.`, `-`, `_`.
pub fn validate_site_name(name: &str) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "site name {name:?} must be 1-64 letters, digits, '.', '-' or '_'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalise_scheme_host_and_default_port() {
        assert_eq!(
            normalize_origin("HTTPS://Shop.Example:443/path?q").unwrap(),
            "https://shop.example"
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8081").unwrap(),
            "http://127.0.0.1:8081"
        );
        assert!(normalize_origin("shop.example").is_err());
        assert!(normalize_origin("ftp://x").is_err());
    }

    #[test]
    fn origin_match_includes_port() {
        let site = Site {
            id: 1,
            name: "s".into(),
            site_key: "k".into(),
            token_hash: hash_token("t"),
            origins: vec!["http://localhost:3000".into()],
            settings: SiteSettings::default(),
        };
        assert!(site.allows_origin("http://localhost:3000"));
        assert!(site.allows_origin("http://localhost:3000/checkout/thanks"));
        assert!(!site.allows_origin("http://localhost:3001"));
        assert!(!site.allows_origin("https://localhost:3000"));
        assert!(site.token_matches("t"));
        assert!(!site.token_matches("u"));
    }
}
