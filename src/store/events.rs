//! The rows the ingest writer reads and writes: appends of unique events and
//! dropped copies, updates of kept rows, and the scans that rebuild the dedup
//! index and check history on import.
//!
//! A kept row is addressed by one of its key fingerprints (id or secondary)
//! plus its window start: windows of one key never overlap, so
//! `received_at >= window start` picks the single row of the live window, and
//! DuckDB's zone maps on the append-ordered `received_at` keep that lookup
//! from scanning the table.

use super::{timestamp, Result, StoreError};
use crate::domain::row::{DroppedRow, EventRow, Matched, RowUpdate, StoredRow};
use crate::domain::{KeyHash, Source};
use duckdb::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array, UInt8Array,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::{params, Connection, OptionalExt};
use std::sync::Arc;

fn seen_flags(seen: u8) -> [bool; 3] {
    Source::ALL.map(|s| seen & s.bit() != 0)
}

/// Appends unique events and dropped copies in the connection's transaction.
/// Rows go in as Arrow record batches: one call per 2,048 rows instead of
/// one per value, which is what lets one writer thread keep up (measured:
/// the per-value appender spent most of the writer's time in malloc/free).
pub fn append(conn: &Connection, rows: &[EventRow], dups: &[DroppedRow]) -> Result<()> {
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

fn u64s(values: impl Iterator<Item = Option<u64>>) -> ArrayRef {
    Arc::new(UInt64Array::from_iter(values))
}

fn u32s(values: impl Iterator<Item = Option<u32>>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter(values))
}

/// The columns of `events`, in table order (migrations 1 and 2).
fn event_batch(rows: &[EventRow]) -> Result<RecordBatch> {
    let seen = |s: Source| -> ArrayRef {
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.seen & s.bit() != 0)),
        ))
    };
    let text = |f: fn(&EventRow) -> Option<&str>| strings(rows.iter().map(f));
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("site", text(|r| Some(r.site.name.as_str()))),
        ("event_id", text(|r| Some(r.event.event_id.as_str()))),
        ("event_name", text(|r| Some(r.event.event_name.as_str()))),
        ("source", text(|r| Some(r.event.source.as_str()))),
        ("seen_pixel", seen(Source::Pixel)),
        ("seen_server", seen(Source::Server)),
        ("seen_import", seen(Source::Import)),
        ("occurred_at", times(rows.iter().map(|r| r.occurred_at))),
        ("received_at", times(rows.iter().map(|r| r.received_at))),
        ("session_id", text(|r| r.event.session_id.as_deref())),
        ("visitor_id", text(|r| r.event.visitor_id.as_deref())),
        ("url", text(|r| r.event.url.as_deref())),
        ("referrer", text(|r| r.event.referrer.as_deref())),
        ("properties", text(|r| r.event.properties.as_deref())),
        ("key_hash", u64s(rows.iter().map(|r| Some(r.key.low())))),
        ("key_hash2", u32s(rows.iter().map(|r| Some(r.key.high())))),
        ("user_data", text(|r| r.event.user_data.as_deref())),
        ("user_id", text(|r| r.event.user_id.as_deref())),
        ("anonymous_id", text(|r| r.event.anonymous_id.as_deref())),
        ("pixel_keys", text(|r| r.pixel_keys.as_deref())),
        (
            "merges",
            Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.merges))),
        ),
        (
            "skey_hash",
            u64s(rows.iter().map(|r| r.skey.map(|k| k.low()))),
        ),
        (
            "skey_hash2",
            u32s(rows.iter().map(|r| r.skey.map(|k| k.high()))),
        ),
        (
            "fingerprint",
            u32s(rows.iter().map(|r| Some(r.fingerprint))),
        ),
    ];
    RecordBatch::try_from_iter(columns).map_err(arrow_error)
}

/// The columns of `duplicates`, in table order.
fn duplicate_batch(dups: &[DroppedRow]) -> Result<RecordBatch> {
    let text = |f: fn(&DroppedRow) -> Option<&str>| strings(dups.iter().map(f));
    let revenue =
        Decimal128Array::from_iter(dups.iter().map(|d| d.revenue.as_ref().map(|r| r.amount.0)))
            .with_precision_and_scale(18, crate::domain::money::SCALE as i8)
            .map_err(arrow_error)?;
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("site", text(|d| Some(d.site.name.as_str()))),
        ("event_id", text(|d| Some(d.event_id.as_str()))),
        ("event_name", text(|d| Some(d.event_name.as_str()))),
        ("source", text(|d| Some(d.source.as_str()))),
        ("received_at", times(dups.iter().map(|d| d.received_at))),
        ("kept_source", text(|d| Some(d.kept_source.as_str()))),
        ("rule", text(|d| Some(d.rule.as_str()))),
        (
            "matched_key",
            text(|d| match &d.matched {
                Matched::EventId => Some("event_id"),
                Matched::Property { name, .. } => Some(name.as_str()),
            }),
        ),
        (
            "matched_value",
            text(|d| match &d.matched {
                Matched::EventId => None,
                Matched::Property { value, .. } => Some(value.as_str()),
            }),
        ),
        ("filled", text(|d| d.filled.as_deref())),
        ("revenue", Arc::new(revenue)),
        (
            "currency",
            text(|d| {
                d.revenue
                    .as_ref()
                    .map(|r| r.currency.as_str())
                    .filter(|c| !c.is_empty())
            }),
        ),
        ("replaced_by", text(|d| d.replaced_by.as_deref())),
    ];
    RecordBatch::try_from_iter(columns).map_err(arrow_error)
}

fn arrow_error(e: duckdb::arrow::error::ArrowError) -> StoreError {
    StoreError::Invalid(format!("building a row batch: {e}"))
}

/// The row of a window, found by either of its keys: the window started at
/// `start` and windows of one key never overlap, so `received_at >= start`
/// picks it, and the zone maps on the append-ordered `received_at` keep the
/// lookup from scanning the table.
const ROW_OF_KEY: &str = "received_at >= ? \
     AND ((key_hash = ? AND key_hash2 = ?) OR (skey_hash = ? AND skey_hash2 = ?))";

fn addr_params(addr: KeyHash, start: u32) -> [duckdb::types::Value; 5] {
    [
        timestamp(i64::from(start) * 1_000_000),
        addr.low().into(),
        addr.high().into(),
        addr.low().into(),
        addr.high().into(),
    ]
}

/// The kept row of the window that opened at `start` (seconds) and holds
/// `addr` as its id key or secondary key.
pub fn load_kept(conn: &Connection, addr: KeyHash, start: u32) -> Result<Option<StoredRow>> {
    let sql = format!(
        "SELECT event_id, source, seen_pixel, seen_server, seen_import, properties::VARCHAR, \
         user_data::VARCHAR, pixel_keys::VARCHAR, coalesce(merges, 0), key_hash, key_hash2, \
         skey_hash, skey_hash2 FROM events WHERE {ROW_OF_KEY} ORDER BY received_at DESC LIMIT 1"
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row(duckdb::params_from_iter(addr_params(addr, start)), |r| {
            let source: String = r.get(1)?;
            let flags: [bool; 3] = [r.get(2)?, r.get(3)?, r.get(4)?];
            let skey: (Option<u64>, Option<u32>) = (r.get(11)?, r.get(12)?);
            Ok(StoredRow {
                event_id: r.get(0)?,
                source: Source::parse(&source).unwrap_or(Source::Server),
                seen: Source::ALL
                    .iter()
                    .zip(flags)
                    .filter(|(_, on)| *on)
                    .fold(0, |m, (s, _)| m | s.bit()),
                properties: r.get(5)?,
                user_data: r.get(6)?,
                pixel_keys: r.get(7)?,
                merges: r.get(8)?,
                key: KeyHash::from_parts(r.get(9)?, r.get(10)?),
                skey: match skey {
                    (Some(low), Some(high)) => Some(KeyHash::from_parts(low, high)),
                    _ => None,
                },
            })
        })
        .optional()?;
    Ok(row)
}

/// Applies a change worked out by [`crate::dedup::Touch::resolve`].
pub fn update(conn: &Connection, u: &RowUpdate) -> Result<()> {
    let [pixel, server, import] = seen_flags(u.seen);
    let at = addr_params(u.addr, u.start);
    match (&u.kept, &u.content) {
        (Some(e), content) => {
            let c = content.as_ref();
            let sql = format!(
                "UPDATE events SET source = ?, seen_pixel = ?, seen_server = ?, seen_import = ?, \
                 occurred_at = coalesce(?, occurred_at), session_id = ?, visitor_id = ?, url = ?, referrer = ?, \
                 user_id = ?, anonymous_id = ?, properties = ?, user_data = ?, pixel_keys = ?, \
                 merges = ?, fingerprint = ? WHERE {ROW_OF_KEY}"
            );
            let mut p: Vec<duckdb::types::Value> = vec![
                e.source.as_str().to_owned().into(),
                pixel.into(),
                server.into(),
                import.into(),
                e.occurred_at.map(timestamp).into(),
                e.session_id.clone().into(),
                e.visitor_id.clone().into(),
                e.url.clone().into(),
                e.referrer.clone().into(),
                e.user_id.clone().into(),
                e.anonymous_id.clone().into(),
                c.and_then(|c| c.properties.clone()).into(),
                c.and_then(|c| c.user_data.clone()).into(),
                c.and_then(|c| c.pixel_keys.clone()).into(),
                c.map_or(0, |c| c.merges).into(),
                c.map_or(0, |c| c.fingerprint).into(),
            ];
            p.extend(at);
            conn.prepare_cached(&sql)?
                .execute(duckdb::params_from_iter(p))?;
        }
        (None, Some(c)) => {
            let sql = format!(
                "UPDATE events SET seen_pixel = seen_pixel OR ?, seen_server = seen_server OR ?, \
                 seen_import = seen_import OR ?, properties = ?, user_data = ?, pixel_keys = ?, \
                 merges = ?, fingerprint = ? WHERE {ROW_OF_KEY}"
            );
            let mut p: Vec<duckdb::types::Value> = vec![
                pixel.into(),
                server.into(),
                import.into(),
                c.properties.clone().into(),
                c.user_data.clone().into(),
                c.pixel_keys.clone().into(),
                c.merges.into(),
                c.fingerprint.into(),
            ];
            p.extend(at);
            conn.prepare_cached(&sql)?
                .execute(duckdb::params_from_iter(p))?;
        }
        (None, None) => {
            let sql = format!(
                "UPDATE events SET seen_pixel = seen_pixel OR ?, seen_server = seen_server OR ?, \
                 seen_import = seen_import OR ? WHERE {ROW_OF_KEY}"
            );
            let mut p: Vec<duckdb::types::Value> = vec![pixel.into(), server.into(), import.into()];
            p.extend(at);
            conn.prepare_cached(&sql)?
                .execute(duckdb::params_from_iter(p))?;
        }
    }
    Ok(())
}

/// One event's keys and summary, as a restart rebuilds the index from them.
#[derive(Debug, Clone, Copy)]
pub struct WindowRow {
    /// The id key.
    pub key: KeyHash,
    /// The secondary key.
    pub skey: Option<KeyHash>,
    /// Window start, seconds.
    pub start: u32,
    /// Source of the kept copy.
    pub kept: Source,
    /// Mask of sources seen.
    pub seen: u8,
    /// Folds so far.
    pub merges: u8,
    /// Fingerprint of the last copy folded in (0: unknown).
    pub fingerprint: u32,
}

/// The mask of sources an event row was seen from ([`Source::bit`]: 1 pixel,
/// 2 server, 4 import), as a SQL expression over its `seen_*` columns.
pub(crate) const SEEN: &str =
    "(seen_pixel::UTINYINT + 2 * seen_server::UTINYINT + 4 * seen_import::UTINYINT)::UTINYINT";

/// Calls `f` for every event that arrived at or after `since_secs`.
/// Reads the fingerprint columns and small computed integers in Arrow
/// batches, never the key strings: this is what keeps a 10M-key restart
/// within seconds. The window start is the arrival's whole second, as the
/// writer computes it: rows are found again by `received_at >= start`
/// ([`load_kept`], [`update`]), so a start rounded up (DuckDB's `epoch_ms`
/// rounds to the nearest millisecond) would lose every change to the row.
pub fn scan_window(conn: &Connection, since_secs: i64, f: impl FnMut(WindowRow)) -> Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM events WHERE received_at >= ?",
        window_columns()
    ))?;
    for_each_window_row(
        stmt.query_arrow(params![timestamp(since_secs * 1_000_000)])?,
        f,
    );
    Ok(())
}

/// The columns [`for_each_window_row`] reads, in its order.
fn window_columns() -> String {
    format!(
        "key_hash, key_hash2, (epoch_us(received_at) // 1000000)::UINTEGER, \
         (CASE source WHEN 'pixel' THEN 0 WHEN 'server' THEN 1 ELSE 2 END)::UTINYINT, {SEEN}, \
         coalesce(merges, 0)::UTINYINT, coalesce(fingerprint, 0)::UINTEGER, skey_hash, skey_hash2"
    )
}

/// Calls `f` for each row of Arrow batches selected with [`window_columns`].
fn for_each_window_row(batches: impl Iterator<Item = RecordBatch>, mut f: impl FnMut(WindowRow)) {
    for batch in batches {
        let low = column::<UInt64Array>(&batch, 0);
        let high = column::<UInt32Array>(&batch, 1);
        let start = column::<UInt32Array>(&batch, 2);
        let kept = column::<UInt8Array>(&batch, 3);
        let seen = column::<UInt8Array>(&batch, 4);
        let merges = column::<UInt8Array>(&batch, 5);
        let print = column::<UInt32Array>(&batch, 6);
        let slow = column::<UInt64Array>(&batch, 7);
        let shigh = column::<UInt32Array>(&batch, 8);
        for i in 0..batch.num_rows() {
            f(WindowRow {
                key: KeyHash::from_parts(low.value(i), high.value(i)),
                skey: (!slow.is_null(i) && !shigh.is_null(i))
                    .then(|| KeyHash::from_parts(slow.value(i), shigh.value(i))),
                start: start.value(i),
                kept: Source::from_index(kept.value(i)),
                seen: seen.value(i),
                merges: merges.value(i),
                fingerprint: print.value(i),
            });
        }
    }
}

fn column<T: 'static>(batch: &duckdb::arrow::record_batch::RecordBatch, i: usize) -> &T {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<T>()
        .expect("scan_window selects fixed column types")
}

/// Hands `found` every row of `site` carrying one of `ids` as its id key or
/// one of `secondary` as its secondary key, in `events`, however old (for
/// `tally import`), with that key: a key may come with several rows, one a
/// window. A row past its window is history, one inside it is as live as
/// the writer's index entry for it. One semi-join whatever the
/// number of keys: they are appended to a connection-local temporary
/// table, so a batch of lines costs one pass over the key columns
/// rather than one per 2,000 keys, and the secondary key column is read
/// only when some are wanted (an id key never equals a secondary key).
pub fn existing_keys(
    conn: &Connection,
    site: &str,
    ids: &[KeyHash],
    secondary: &[KeyHash],
    mut found: impl FnMut(KeyHash, &WindowRow),
) -> Result<()> {
    if ids.is_empty() && secondary.is_empty() {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS wanted_keys (k UBIGINT, secondary BOOLEAN); \
         DELETE FROM wanted_keys",
    )?;
    {
        let mut wanted = conn.appender_to_catalog_and_db("wanted_keys", "temp", "main")?;
        for (keys, is_secondary) in [(ids, false), (secondary, true)] {
            for k in keys {
                wanted.append_row(params![k.low(), is_secondary])?;
            }
        }
        // Explicitly: a flush error on drop would be lost, and a key
        // missing here would count its line as new.
        wanted.flush()?;
    }
    let match_ids = "key_hash IN (SELECT k FROM wanted_keys WHERE NOT secondary)";
    let condition = if secondary.is_empty() {
        match_ids.to_owned()
    } else {
        format!("({match_ids} OR skey_hash IN (SELECT k FROM wanted_keys WHERE secondary))")
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM events WHERE site = ? AND {condition}",
        window_columns()
    ))?;
    let ids: std::collections::HashSet<KeyHash> = ids.iter().copied().collect();
    let secondary: std::collections::HashSet<KeyHash> = secondary.iter().copied().collect();
    for_each_window_row(stmt.query_arrow([site])?, |row| {
        // The join matched the low 64 bits; the whole fingerprint decides.
        if ids.contains(&row.key) {
            found(row.key, &row);
        }
        if let Some(skey) = row.skey.filter(|k| secondary.contains(k)) {
            found(skey, &row);
        }
    });
    conn.execute_batch("DELETE FROM wanted_keys")?;
    Ok(())
}

/// Unique events `site` has stored.
pub fn count(conn: &Connection, site: &str) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT count(*) FROM events WHERE site = ?", [site], |r| {
        r.get(0)
    })?;
    Ok(n as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An arrival in the last half millisecond of a second starts its
    /// window in that second, so the row is found again after a restart.
    #[test]
    fn a_rebuilt_window_starts_in_the_second_of_the_arrival() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&conn).unwrap();
        let key = KeyHash::of(1, "order", "o1");
        let arrival = 1_795_467_901_999_701;
        conn.execute(
            "INSERT INTO events (site, event_id, event_name, source, seen_pixel, seen_server, \
             seen_import, occurred_at, received_at, key_hash, key_hash2) \
             VALUES ('shop', 'o1', 'order', 'server', false, true, false, ?, ?, ?, ?)",
            params![
                timestamp(arrival),
                timestamp(arrival),
                key.low(),
                key.high()
            ],
        )
        .unwrap();
        let mut starts = Vec::new();
        scan_window(&conn, 0, |r| starts.push(r.start)).unwrap();
        assert_eq!(starts, [1_795_467_901]);
        let row = load_kept(&conn, key, starts[0]).unwrap();
        assert_eq!(row.map(|r| r.event_id).as_deref(), Some("o1"));
    }
}
