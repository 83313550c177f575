//! The rows deduplication produces, as plain data: a unique event for
//! `events` and a dropped copy for `duplicates`. [`crate::dedup`] makes them,
//! [`crate::store`] writes them; neither needs the other's types.

use super::money::Revenue;
use super::{Event, KeyHash, Site, Source};
use std::sync::Arc;

/// Why a copy was dropped: the `duplicates.rule` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Its `(event_name, event_id)` key was live in the window.
    SameKey,
    /// Its secondary key (a declared property) was live in the window.
    SecondaryKey,
    /// It was the kept copy until a preferred copy replaced it (`prefer_pixel`).
    Replaced,
    /// An import found its key in the store's history, past the window.
    History,
}

impl Rule {
    /// Every rule, in the order of [`Rule::as_str`]'s table.
    pub const ALL: [Rule; 4] = [
        Rule::SameKey,
        Rule::SecondaryKey,
        Rule::Replaced,
        Rule::History,
    ];

    /// The name in the store and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SameKey => "same_key",
            Rule::SecondaryKey => "secondary_key",
            Rule::Replaced => "replaced",
            Rule::History => "history",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What the rule means, for people (the inspector).
    pub fn describe(self) -> &'static str {
        match self {
            Rule::SameKey => "same event_id in the window",
            Rule::SecondaryKey => "same secondary key in the window",
            Rule::Replaced => "replaced by a preferred copy (prefer_pixel)",
            Rule::History => "already in the store (import history check)",
        }
    }
}

/// The key a dropped copy matched: its id, or a declared property's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// The `(event_name, event_id)` key.
    EventId,
    /// A secondary key: the property and its value as text.
    Property {
        /// The declared property, e.g. `order_id`.
        name: String,
        /// Its value as text, e.g. `42`.
        value: String,
    },
}

/// A unique event as appended to `events`.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Its site.
    pub site: Arc<Site>,
    /// The kept copy (`properties` / `user_data` as merged).
    pub event: Event,
    /// When it happened (µs): the kept copy's time, else its arrival.
    pub occurred_at: i64,
    /// When the first copy arrived (µs); the window start.
    pub received_at: i64,
    /// Mask of [`Source::bit`]s that sent a copy.
    pub seen: u8,
    /// The id key's fingerprint.
    pub key: KeyHash,
    /// The secondary key's fingerprint, if the event has one.
    pub skey: Option<KeyHash>,
    /// Property keys holding a pixel's value, as a JSON array; `None` if none.
    pub pixel_keys: Option<String>,
    /// Folds that changed the row.
    pub merges: u8,
    /// Fingerprint of the last copy folded in (see [`crate::dedup::Copy`]).
    pub fingerprint: u32,
}

/// A dropped copy as appended to `duplicates`.
#[derive(Debug, Clone)]
pub struct DroppedRow {
    /// Its site.
    pub site: Arc<Site>,
    /// The dropped copy's id.
    pub event_id: String,
    /// Its name.
    pub event_name: String,
    /// Who sent it.
    pub source: Source,
    /// When it arrived (µs); for [`Rule::Replaced`], when it was replaced.
    pub received_at: i64,
    /// Source of the copy kept instead.
    pub kept_source: Source,
    /// Why it was dropped.
    pub rule: Rule,
    /// The key that matched.
    pub matched: Matched,
    /// The property keys and values it set on the kept row (JSON object).
    pub filled: Option<String>,
    /// The revenue it carried (the over-count dedup avoided).
    pub revenue: Option<Revenue>,
    /// For [`Rule::Replaced`]: the id of the copy that replaced it (the
    /// event keeps the id its window opened with).
    pub replaced_by: Option<String>,
}

/// What the writer reads of a stored kept row before changing it.
#[derive(Debug, Clone)]
pub struct StoredRow {
    /// The event's id (kept by a replacement).
    pub event_id: String,
    /// Source of the kept copy.
    pub source: Source,
    /// Mask of sources seen.
    pub seen: u8,
    /// Properties JSON text.
    pub properties: Option<String>,
    /// User data JSON text.
    pub user_data: Option<String>,
    /// Stored `pixel_keys`.
    pub pixel_keys: Option<String>,
    /// Folds so far.
    pub merges: u8,
    /// The id key.
    pub key: KeyHash,
    /// The secondary key.
    pub skey: Option<KeyHash>,
}

/// The new content of a stored row.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    /// Properties JSON text.
    pub properties: Option<String>,
    /// User data JSON text.
    pub user_data: Option<String>,
    /// Stored `pixel_keys`.
    pub pixel_keys: Option<String>,
    /// Folds so far.
    pub merges: u8,
    /// Fingerprint of the last copy folded in.
    pub fingerprint: u32,
}

/// A change to one stored row, addressed by a key and its window start.
#[derive(Debug, Clone)]
pub struct RowUpdate {
    /// The key the row is found by.
    pub addr: KeyHash,
    /// Its window start (seconds).
    pub start: u32,
    /// Sources seen (set with OR, so concurrent stale views cannot clear one).
    pub seen: u8,
    /// New properties and user data, when a fold changed them.
    pub content: Option<Content>,
    /// The copy that is kept now (`prefer_pixel`), with the row's id; its
    /// `occurred_at`, when it has one, becomes the event's.
    pub kept: Option<Event>,
}
