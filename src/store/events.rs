//! The rows the ingest writer reads and writes: appends of unique events and
//! dropped copies, updates of kept rows, and the scans that rebuild the dedup
//! index and check history on import.
//!
//! A kept row is addressed by its key fingerprint plus its window start:
//! windows of one key never overlap, so `received_at >= window start` picks
//! the single row of the live window, and DuckDB's zone maps on the
//! append-ordered `received_at` keep that lookup from scanning the table.

use super::{timestamp, Result, StoreError};
use crate::domain::{KeyHash, Source};
use duckdb::arrow::array::{
    Array, ArrayRef, BooleanArray, StringArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array, UInt8Array,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::{params, Connection, OptionalExt};
use std::collections::HashMap;
use std::sync::Arc;

/// A unique event as appended to `events`.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Site name.
    pub site: String,
    /// Sender's id.
    pub event_id: String,
    /// Event name.
    pub event_name: String,
    /// Source of the kept copy.
    pub source: Source,
    /// Mask of [`Source::bit`]s that sent a copy.
    pub seen: u8,
    /// When it happened (µs).
    pub occurred_at: i64,
    /// When the first copy arrived (µs); the window start.
    pub received_at: i64,
    /// Session id.
    pub session_id: Option<String>,
    /// Visitor hash.
    pub visitor_id: Option<String>,
    /// Page URL.
    pub url: Option<String>,
    /// Referrer.
    pub referrer: Option<String>,
    /// Properties object, JSON text.
    pub properties: Option<String>,
    /// Key fingerprint.
    pub key: KeyHash,
}

/// A dropped copy as appended to `duplicates`.
#[derive(Debug, Clone)]
pub struct DuplicateRow {
    /// Site name.
    pub site: String,
    /// Sender's id.
    pub event_id: String,
    /// Event name.
    pub event_name: String,
    /// Who sent the dropped copy.
    pub source: Source,
    /// When it arrived (µs).
    pub received_at: i64,
    /// Source of the copy kept instead.
    pub kept_source: Source,
}

/// What the writer needs of a kept row before merging into it.
#[derive(Debug, Clone)]
pub struct KeptRow {
    /// Source of the kept copy.
    pub source: Source,
    /// Mask of sources seen.
    pub seen: u8,
    /// Properties JSON text.
    pub properties: Option<String>,
}

fn seen_flags(seen: u8) -> [bool; 3] {
    Source::ALL.map(|s| seen & s.bit() != 0)
}

/// Appends unique events and dropped copies in the connection's transaction.
/// Rows go in as Arrow record batches: one call per 2,048 rows instead of
/// one per value, which is what lets one writer thread keep up (measured:
/// the per-value appender spent most of the writer's time in malloc/free).
pub fn append(conn: &Connection, rows: &[EventRow], dups: &[DuplicateRow]) -> Result<()> {
    if !rows.is_empty() {
        conn.appender("events")?
            .append_record_batch(event_batch(rows)?)?;
    }
    if !dups.is_empty() {
        conn.appender("duplicates")?
            .append_record_batch(duplicate_batch(dups)?)?;
    }
    Ok(())
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

fn times(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values))
}

fn event_batch(rows: &[EventRow]) -> Result<RecordBatch> {
    let seen = |s: Source| -> ArrayRef {
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.seen & s.bit() != 0)),
        ))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("site", strings(rows.iter().map(|r| Some(r.site.as_str())))),
        (
            "event_id",
            strings(rows.iter().map(|r| Some(r.event_id.as_str()))),
        ),
        (
            "event_name",
            strings(rows.iter().map(|r| Some(r.event_name.as_str()))),
        ),
        (
            "source",
            strings(rows.iter().map(|r| Some(r.source.as_str()))),
        ),
        ("seen_pixel", seen(Source::Pixel)),
        ("seen_server", seen(Source::Server)),
        ("seen_import", seen(Source::Import)),
        ("occurred_at", times(rows.iter().map(|r| r.occurred_at))),
        ("received_at", times(rows.iter().map(|r| r.received_at))),
        (
            "session_id",
            strings(rows.iter().map(|r| r.session_id.as_deref())),
        ),
        (
            "visitor_id",
            strings(rows.iter().map(|r| r.visitor_id.as_deref())),
        ),
        ("url", strings(rows.iter().map(|r| r.url.as_deref()))),
        (
            "referrer",
            strings(rows.iter().map(|r| r.referrer.as_deref())),
        ),
        (
            "properties",
            strings(rows.iter().map(|r| r.properties.as_deref())),
        ),
        (
            "key_hash",
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.key.low()),
            )),
        ),
        (
            "key_hash2",
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.key.high()),
            )),
        ),
    ];
    RecordBatch::try_from_iter(columns).map_err(arrow_error)
}

fn duplicate_batch(dups: &[DuplicateRow]) -> Result<RecordBatch> {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("site", strings(dups.iter().map(|d| Some(d.site.as_str())))),
        (
            "event_id",
            strings(dups.iter().map(|d| Some(d.event_id.as_str()))),
        ),
        (
            "event_name",
            strings(dups.iter().map(|d| Some(d.event_name.as_str()))),
        ),
        (
            "source",
            strings(dups.iter().map(|d| Some(d.source.as_str()))),
        ),
        ("received_at", times(dups.iter().map(|d| d.received_at))),
        (
            "kept_source",
            strings(dups.iter().map(|d| Some(d.kept_source.as_str()))),
        ),
    ];
    RecordBatch::try_from_iter(columns).map_err(arrow_error)
}

fn arrow_error(e: duckdb::arrow::error::ArrowError) -> StoreError {
    StoreError::Invalid(format!("building a row batch: {e}"))
}

/// The kept row of `key`'s window that opened at `window_start` (seconds).
pub fn load_kept(conn: &Connection, key: KeyHash, window_start: u32) -> Result<Option<KeptRow>> {
    let row = conn
        .prepare_cached(
            "SELECT source, seen_pixel, seen_server, seen_import, properties::VARCHAR FROM events \
             WHERE received_at >= ? AND key_hash = ? AND key_hash2 = ? \
             ORDER BY received_at DESC LIMIT 1",
        )?
        .query_row(
            params![
                timestamp(i64::from(window_start) * 1_000_000),
                key.low(),
                key.high()
            ],
            |r| {
                let source: String = r.get(0)?;
                let flags: [bool; 3] = [r.get(1)?, r.get(2)?, r.get(3)?];
                Ok(KeptRow {
                    source: Source::parse(&source).unwrap_or(Source::Server),
                    seen: Source::ALL
                        .iter()
                        .zip(flags)
                        .filter(|(_, on)| *on)
                        .fold(0, |m, (s, _)| m | s.bit()),
                    properties: r.get(4)?,
                })
            },
        )
        .optional()?;
    Ok(row)
}

/// Rewrites the sources seen and properties of a kept row.
pub fn update_kept(
    conn: &Connection,
    key: KeyHash,
    window_start: u32,
    seen: u8,
    properties: Option<&str>,
) -> Result<()> {
    let [pixel, server, import] = seen_flags(seen);
    conn.prepare_cached(
        "UPDATE events SET seen_pixel = ?, seen_server = ?, seen_import = ?, properties = ? \
         WHERE received_at >= ? AND key_hash = ? AND key_hash2 = ?",
    )?
    .execute(params![
        pixel,
        server,
        import,
        properties,
        timestamp(i64::from(window_start) * 1_000_000),
        key.low(),
        key.high()
    ])?;
    Ok(())
}

/// Rewrites only the sources seen of a kept row.
pub fn update_seen(conn: &Connection, key: KeyHash, window_start: u32, seen: u8) -> Result<()> {
    let [pixel, server, import] = seen_flags(seen);
    conn.prepare_cached(
        "UPDATE events SET seen_pixel = ?, seen_server = ?, seen_import = ? \
         WHERE received_at >= ? AND key_hash = ? AND key_hash2 = ?",
    )?
    .execute(params![
        pixel,
        server,
        import,
        timestamp(i64::from(window_start) * 1_000_000),
        key.low(),
        key.high()
    ])?;
    Ok(())
}

/// Replaces the kept copy of a row with another copy (the `prefer_pixel`
/// policy); the window start (`received_at`) stays.
pub fn replace_kept(conn: &Connection, window_start: u32, row: &EventRow) -> Result<()> {
    let [pixel, server, import] = seen_flags(row.seen);
    conn.prepare_cached(
        "UPDATE events SET source = ?, seen_pixel = ?, seen_server = ?, seen_import = ?, \
         occurred_at = ?, session_id = ?, visitor_id = ?, url = ?, referrer = ?, properties = ? \
         WHERE received_at >= ? AND key_hash = ? AND key_hash2 = ?",
    )?
    .execute(params![
        row.source.as_str(),
        pixel,
        server,
        import,
        timestamp(row.occurred_at),
        row.session_id,
        row.visitor_id,
        row.url,
        row.referrer,
        row.properties,
        timestamp(i64::from(window_start) * 1_000_000),
        row.key.low(),
        row.key.high()
    ])?;
    Ok(())
}

/// Calls `f(key, window_start_secs, kept_source, sources_seen)` for every
/// event that arrived at or after `since_secs`. Reads the fingerprint
/// columns and three small computed integers in Arrow batches, never the key
/// strings: this is what keeps a 10M-key restart within seconds.
pub fn scan_window(
    conn: &Connection,
    since_secs: i64,
    mut f: impl FnMut(KeyHash, u32, Source, u8),
) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT key_hash, key_hash2, (epoch_ms(received_at) // 1000)::UINTEGER, \
         (CASE source WHEN 'pixel' THEN 0 WHEN 'server' THEN 1 ELSE 2 END)::UTINYINT, \
         (seen_pixel::UTINYINT + 2 * seen_server::UTINYINT + 4 * seen_import::UTINYINT)::UTINYINT \
         FROM events WHERE received_at >= ?",
    )?;
    for batch in stmt.query_arrow(params![timestamp(since_secs * 1_000_000)])? {
        let low = column::<UInt64Array>(&batch, 0);
        let high = column::<UInt32Array>(&batch, 1);
        let start = column::<UInt32Array>(&batch, 2);
        let kept = column::<UInt8Array>(&batch, 3);
        let seen = column::<UInt8Array>(&batch, 4);
        for i in 0..batch.num_rows() {
            f(
                KeyHash::from_parts(low.value(i), high.value(i)),
                start.value(i),
                Source::from_index(kept.value(i)),
                seen.value(i),
            );
        }
    }
    Ok(())
}

fn column<T: 'static>(batch: &duckdb::arrow::record_batch::RecordBatch, i: usize) -> &T {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<T>()
        .expect("scan_window selects fixed column types")
}

/// Which of `keys` have any row in `events`, however old (for `tally
/// import`), with the source of a kept copy.
pub fn existing_keys(
    conn: &Connection,
    site: &str,
    keys: &[KeyHash],
) -> Result<HashMap<KeyHash, Source>> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(2_000) {
        // The list holds integers we formatted ourselves: no injection.
        let list = chunk
            .iter()
            .map(|k| k.low().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut stmt = conn.prepare(&format!(
            "SELECT key_hash, key_hash2, any_value(source) FROM events \
             WHERE site = ? AND key_hash IN ({list}) GROUP BY ALL"
        ))?;
        let rows = stmt.query_map([site], |r| {
            let source: String = r.get(2)?;
            Ok((
                KeyHash::from_parts(r.get(0)?, r.get(1)?),
                Source::parse(&source).unwrap_or(Source::Import),
            ))
        })?;
        for row in rows {
            let (key, source) = row?;
            found.insert(key, source);
        }
    }
    Ok(found)
}

/// Unique events per site that arrived at or after `since_micros`.
pub fn counts_since(conn: &Connection, since_micros: i64) -> Result<Vec<(String, u64)>> {
    let mut stmt =
        conn.prepare("SELECT site, count(*) FROM events WHERE received_at >= ? GROUP BY site")?;
    let rows = stmt
        .query_map(params![timestamp(since_micros)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}
