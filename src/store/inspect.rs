//! The inspector: "what happened to order 42?" Every copy Tally received for
//! an `event_id` (or its secondary key), which copy was kept, and which rule
//! decided for each dropped one (SPEC §5), read from `events` and
//! `duplicates`.

use super::conversions::json_path;
use super::sql::format_timestamp;
use super::{timestamp, Result};
use crate::domain::row::Rule;
use crate::domain::{Site, Source};
use duckdb::{params, Connection};
use serde::{Deserialize, Serialize};

/// Everything known about one id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    /// Site name.
    pub site: String,
    /// The id looked up.
    pub event_id: String,
    /// One entry per unique event the id took part in, oldest first.
    pub events: Vec<Logical>,
    /// Dropped copies whose kept row is no longer in the store (deleted by
    /// retention or by hand).
    pub unmatched: Vec<CopySeen>,
}

/// A unique event and its copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logical {
    /// The kept row's id (the one its window opened with).
    pub event_id: String,
    /// Its name.
    pub event_name: String,
    /// Source of the kept copy.
    pub kept_source: String,
    /// Sources that sent a copy.
    pub sources_seen: Vec<String>,
    /// Arrival of the first copy: the window start.
    pub window_start: String,
    /// When it happened.
    pub occurred_at: String,
    /// `new`, or `after_window` when an earlier window of the same key had closed.
    pub opened: String,
    /// The secondary key, when the site declares one for this name.
    pub secondary_key: Option<SecondaryKey>,
    /// The kept row's properties.
    pub properties: Option<serde_json::Value>,
    /// Every copy, in arrival order; exactly one has `kept: true`.
    pub copies: Vec<CopySeen>,
}

/// A declared property and its value on the kept row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondaryKey {
    /// The property.
    pub property: String,
    /// Its value as text.
    pub value: String,
}

/// One copy as the store remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopySeen {
    /// The id the copy carried.
    pub event_id: String,
    /// Who sent it.
    pub source: String,
    /// When it arrived.
    pub arrived: String,
    /// For a copy a preferred one replaced: when that happened.
    pub replaced_at: Option<String>,
    /// Whether it is the kept copy.
    pub kept: bool,
    /// For a dropped copy: the rule that decided (`same_key`,
    /// `secondary_key`, `replaced`, `history`).
    pub rule: Option<String>,
    /// The rule in words.
    pub why: Option<String>,
    /// The key that matched: `event_id` or the declared property.
    pub matched_key: Option<String>,
    /// The secondary key's value that matched.
    pub matched_value: Option<String>,
    /// Property keys and values this copy set on the kept row.
    pub filled: Option<serde_json::Value>,
}

struct KeptRow {
    event_id: String,
    event_name: String,
    source: String,
    seen: [bool; 3],
    received_at: i64,
    occurred_at: i64,
    properties: Option<String>,
}

struct DroppedCopy {
    replaced_by: Option<String>,
    event_id: String,
    event_name: String,
    source: String,
    received_at: i64,
    rule: String,
    matched_key: String,
    matched_value: Option<String>,
    filled: Option<String>,
}

const KEPT_COLUMNS: &str = "event_id, event_name, source, seen_pixel, seen_server, seen_import, \
     epoch_us(received_at), epoch_us(occurred_at), properties::VARCHAR";
const DROPPED_COLUMNS: &str = "event_id, event_name, source, epoch_us(received_at), \
     coalesce(rule, 'same_key'), coalesce(matched_key, 'event_id'), matched_value, filled::VARCHAR, \
     replaced_by";

fn kept_row(r: &duckdb::Row<'_>) -> duckdb::Result<KeptRow> {
    Ok(KeptRow {
        event_id: r.get(0)?,
        event_name: r.get(1)?,
        source: r.get(2)?,
        seen: [r.get(3)?, r.get(4)?, r.get(5)?],
        received_at: r.get(6)?,
        occurred_at: r.get(7)?,
        properties: r.get(8)?,
    })
}

fn dropped_copy(r: &duckdb::Row<'_>) -> duckdb::Result<DroppedCopy> {
    Ok(DroppedCopy {
        event_id: r.get(0)?,
        event_name: r.get(1)?,
        source: r.get(2)?,
        received_at: r.get(3)?,
        rule: r.get(4)?,
        matched_key: r.get(5)?,
        matched_value: r.get(6)?,
        filled: r.get(7)?,
        replaced_by: r.get(8)?,
    })
}

/// Looks up every copy of `event_id` (optionally only under `name`) in `site`.
pub fn lookup(
    conn: &Connection,
    site: &Site,
    event_id: &str,
    name: Option<&str>,
) -> Result<Inspection> {
    let window = i64::from(site.settings.window_secs) * 1_000_000;
    let name_filter = if name.is_some() {
        "AND event_name = ?"
    } else {
        "AND ? IS NULL"
    };
    // Rows kept under this id, and copies with this id that were dropped.
    let mut kept: Vec<KeptRow> = conn
        .prepare(&format!(
            "SELECT {KEPT_COLUMNS} FROM events WHERE site = ? AND event_id = ? {name_filter} \
             ORDER BY received_at"
        ))?
        .query_map(params![site.name, event_id, name], kept_row)?
        .collect::<duckdb::Result<_>>()?;
    let mut dropped: Vec<DroppedCopy> = conn
        .prepare(&format!(
            "SELECT {DROPPED_COLUMNS} FROM duplicates \
             WHERE site = ? AND (event_id = ? OR replaced_by = ?) {name_filter} ORDER BY received_at"
        ))?
        .query_map(params![site.name, event_id, event_id, name], dropped_copy)?
        .collect::<duckdb::Result<_>>()?;
    // A copy that replaced the kept one (prefer_pixel) through a secondary
    // key is kept under the id its window opened with.
    for d in dropped
        .iter()
        .filter(|d| d.replaced_by.as_deref() == Some(event_id) && d.event_id != event_id)
    {
        let row: Vec<KeptRow> = conn
            .prepare(&format!(
                "SELECT {KEPT_COLUMNS} FROM events WHERE site = ? AND event_name = ? AND event_id = ? \
                 AND received_at <= ? ORDER BY received_at DESC LIMIT 1"
            ))?
            .query_map(params![site.name, d.event_name, d.event_id, timestamp(d.received_at)], kept_row)?
            .collect::<duckdb::Result<_>>()?;
        for r in row {
            if !kept
                .iter()
                .any(|k| k.event_id == r.event_id && k.received_at == r.received_at)
            {
                kept.push(r);
            }
        }
    }
    // Copies of this id dropped through a secondary key point at a row kept
    // under another id: find it by the key's value within the window.
    for d in dropped
        .iter()
        .filter(|d| d.rule == Rule::SecondaryKey.as_str())
    {
        let Some(value) = &d.matched_value else {
            continue;
        };
        let other: Vec<KeptRow> = conn
            .prepare(&format!(
                "SELECT {KEPT_COLUMNS} FROM events WHERE site = ? AND event_name = ? \
                 AND received_at <= ? AND received_at > ? \
                 AND json_extract_string(properties, ?) = ? \
                 ORDER BY received_at DESC LIMIT 1"
            ))?
            .query_map(
                params![
                    site.name,
                    d.event_name,
                    timestamp(d.received_at),
                    timestamp(d.received_at - window),
                    json_path(&d.matched_key),
                    value
                ],
                kept_row,
            )?
            .collect::<duckdb::Result<_>>()?;
        for row in other {
            if !kept
                .iter()
                .any(|k| k.event_id == row.event_id && k.received_at == row.received_at)
            {
                kept.push(row);
            }
        }
    }
    kept.sort_by_key(|k| k.received_at);
    // Every copy each kept row absorbed in its window: by its id, or by
    // its secondary key under another id.
    for k in &kept {
        let secondary = secondary_of(site, k);
        let (property, value) = secondary.clone().unzip();
        let more: Vec<DroppedCopy> = conn
            .prepare(&format!(
                "SELECT {DROPPED_COLUMNS} FROM duplicates WHERE site = ? AND event_name = ? \
                 AND received_at >= ? AND received_at < ? \
                 AND (event_id = ? OR (matched_key = ? AND matched_value = ?))"
            ))?
            .query_map(
                params![
                    site.name,
                    k.event_name,
                    timestamp(k.received_at),
                    timestamp(k.received_at + window),
                    k.event_id,
                    property,
                    value
                ],
                dropped_copy,
            )?
            .collect::<duckdb::Result<_>>()?;
        for d in more {
            let known = dropped.iter().any(|x| {
                x.event_id == d.event_id && x.received_at == d.received_at && x.source == d.source
            });
            if !known {
                dropped.push(d);
            }
        }
    }
    let (events, unmatched) = assemble(site, kept, dropped, window);
    Ok(Inspection {
        site: site.name.clone(),
        event_id: event_id.to_owned(),
        events,
        unmatched,
    })
}

/// The secondary key (property, value) of a kept row, under the site's
/// current declaration.
fn secondary_of(site: &Site, k: &KeptRow) -> Option<(String, String)> {
    let property = site.settings.secondary_key(&k.event_name)?;
    let props = crate::dedup::props::parse_object(k.properties.as_deref());
    let value = crate::domain::key::secondary_value(&props, property)?;
    Some((property.to_owned(), value))
}

/// Groups dropped copies under the kept row whose window they fell in (an
/// import's history copies under the latest row of their key).
fn assemble(
    site: &Site,
    kept: Vec<KeptRow>,
    dropped: Vec<DroppedCopy>,
    window: i64,
) -> (Vec<Logical>, Vec<CopySeen>) {
    let secondaries: Vec<_> = kept.iter().map(|k| secondary_of(site, k)).collect();
    let same_key = |k: &KeptRow, secondary: &Option<(String, String)>, d: &DroppedCopy| {
        d.event_name == k.event_name
            && (d.event_id == k.event_id
                || secondary.as_ref().is_some_and(|(p, v)| {
                    d.matched_key == *p && d.matched_value.as_deref() == Some(v.as_str())
                }))
    };
    let owner = |d: &DroppedCopy| -> Option<usize> {
        let in_window = kept.iter().zip(&secondaries).position(|(k, s)| {
            same_key(k, s, d)
                && d.received_at >= k.received_at
                && d.received_at < k.received_at + window
        });
        in_window.or_else(|| {
            (d.rule == Rule::History.as_str())
                .then(|| {
                    kept.iter()
                        .zip(&secondaries)
                        .rposition(|(k, s)| same_key(k, s, d))
                })
                .flatten()
        })
    };
    let owners: Vec<Option<usize>> = dropped.iter().map(owner).collect();
    let unmatched = dropped
        .iter()
        .zip(&owners)
        .filter(|(_, o)| o.is_none())
        .map(|(d, _)| seen_copy(d))
        .collect();
    let mut out: Vec<Logical> = Vec::new();
    let mut windows: Vec<(String, String)> = Vec::new();
    for (i, (k, secondary)) in kept.iter().zip(secondaries).enumerate() {
        let key = (k.event_id.clone(), k.event_name.clone());
        let earlier = windows.contains(&key);
        windows.push(key);
        let mine: Vec<&DroppedCopy> = dropped
            .iter()
            .zip(&owners)
            .filter(|(_, o)| **o == Some(i))
            .map(|(d, _)| d)
            .collect();
        // A replaced copy was kept from the window's start, or from the
        // replacement before it; the kept copy arrived at the last one.
        let mut replaced: Vec<i64> = mine
            .iter()
            .filter(|d| d.rule == Rule::Replaced.as_str())
            .map(|d| d.received_at)
            .collect();
        replaced.sort_unstable();
        let kept_since = replaced.last().copied().unwrap_or(k.received_at);
        let kept_id = mine
            .iter()
            .filter(|d| d.rule == Rule::Replaced.as_str())
            .max_by_key(|d| d.received_at)
            .and_then(|d| d.replaced_by.clone())
            .unwrap_or_else(|| k.event_id.clone());
        let mut copies: Vec<(i64, CopySeen)> = vec![(
            kept_since,
            CopySeen {
                event_id: kept_id,
                source: k.source.clone(),
                arrived: format_timestamp(kept_since),
                replaced_at: None,
                kept: true,
                rule: None,
                why: None,
                matched_key: None,
                matched_value: None,
                filled: None,
            },
        )];
        for d in mine {
            let mut c = seen_copy(d);
            let mut arrived = d.received_at;
            if d.rule == Rule::Replaced.as_str() {
                let before = replaced.iter().rev().find(|t| **t < d.received_at);
                arrived = before.copied().unwrap_or(k.received_at);
                c.arrived = format_timestamp(arrived);
                c.replaced_at = Some(format_timestamp(d.received_at));
            }
            copies.push((arrived, c));
        }
        copies.sort_by_key(|(at, c)| (*at, c.kept));
        let copies = copies.into_iter().map(|(_, c)| c).collect();
        out.push(Logical {
            event_id: k.event_id.clone(),
            event_name: k.event_name.clone(),
            kept_source: k.source.clone(),
            sources_seen: Source::ALL
                .iter()
                .zip(k.seen)
                .filter(|(_, on)| *on)
                .map(|(s, _)| s.as_str().to_owned())
                .collect(),
            window_start: format_timestamp(k.received_at),
            occurred_at: format_timestamp(k.occurred_at),
            opened: if earlier { "after_window" } else { "new" }.to_owned(),
            secondary_key: secondary.map(|(property, value)| SecondaryKey { property, value }),
            properties: k
                .properties
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            copies,
        });
    }
    (out, unmatched)
}

fn seen_copy(d: &DroppedCopy) -> CopySeen {
    CopySeen {
        event_id: d.event_id.clone(),
        source: d.source.clone(),
        arrived: format_timestamp(d.received_at),
        replaced_at: None,
        kept: false,
        rule: Some(d.rule.clone()),
        why: Rule::parse(&d.rule).map(|r| r.describe().to_owned()),
        matched_key: Some(d.matched_key.clone()),
        matched_value: d.matched_value.clone(),
        filled: d
            .filled
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok()),
    }
}
