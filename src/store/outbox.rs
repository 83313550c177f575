//! Forwarding's tables: `destinations` (one JSON config per destination) and
//! `outbox`, the transactional outbox. The writer appends an outbox row in
//! the same transaction as the unique event it forwards: the event's key
//! and window start (which find its row in `events`), the destination and
//! the due time, nothing it would have to copy. The sender reads due rows
//! in pages, joined with the event as it stands then (so copies that merged
//! in during the settle delay go out too), and marks each row delivered or
//! failed. A row is found again by its `rowid`.

use super::{timestamp, Result, StoreError};
use crate::domain::forward::Destination;
use crate::domain::row::EventRow;
use duckdb::arrow::array::{
    ArrayRef, Int32Array, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::{params, Connection, OptionalExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Every destination, by id.
pub fn destinations(conn: &Connection) -> Result<Vec<Destination>> {
    let mut stmt = conn.prepare("SELECT config::VARCHAR FROM destinations ORDER BY dest_id")?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<duckdb::Result<Vec<_>>>()?;
    rows.iter()
        .map(|text| {
            serde_json::from_str(text).map_err(|e| {
                StoreError::Invalid(format!("a destination's config is unreadable: {e}"))
            })
        })
        .collect()
}

/// Stores a new destination under the next free id; returns it with its id.
pub fn add_destination(conn: &Connection, mut d: Destination, now: i64) -> Result<Destination> {
    super::transaction(conn, |c| {
        d.id = c.query_row(
            "SELECT coalesce(max(dest_id), 0) + 1 FROM destinations",
            [],
            |r| r.get(0),
        )?;
        let config = serde_json::to_string(&d).map_err(|e| StoreError::Invalid(e.to_string()))?;
        c.execute(
            "INSERT INTO destinations VALUES (?, ?, ?, ?)",
            params![d.id, d.site, config, timestamp(now)],
        )?;
        Ok::<_, StoreError>(d)
    })
}

/// Deletes a destination and its outbox rows; whether it existed.
pub fn remove_destination(conn: &Connection, id: u32) -> Result<bool> {
    Ok(super::transaction(conn, |c| {
        c.execute("DELETE FROM outbox WHERE dest_id = ?", [id])?;
        Ok::<_, duckdb::Error>(c.execute("DELETE FROM destinations WHERE dest_id = ?", [id])? > 0)
    })?)
}

/// Appends one outbox row per (destination, event, due time), in the
/// caller's transaction. Only numbers and a short state: this runs inside
/// every ingest commit, and each string costs the append a call per row.
pub fn append(conn: &Connection, rows: &[(u32, &EventRow, i64)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let times = |f: fn(&(u32, &EventRow, i64)) -> i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            rows.iter().map(f),
        ))
    };
    let n = rows.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "dest_id",
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|(d, _, _)| *d as i32),
            )),
        ),
        (
            "key_hash",
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, r, _)| r.key.low()),
            )),
        ),
        (
            "key_hash2",
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|(_, r, _)| r.key.high()),
            )),
        ),
        ("window_start", times(|(_, r, _)| r.received_at)),
        ("due_at", times(|(_, _, due)| *due)),
        (
            "attempts",
            Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(0, n))),
        ),
        (
            "state",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "pending", n,
            ))),
        ),
        (
            "last_error",
            Arc::new(StringArray::from_iter(std::iter::repeat_n(None::<&str>, n))),
        ),
        (
            "delivered_at",
            Arc::new(TimestampMicrosecondArray::from_iter(std::iter::repeat_n(
                None, n,
            ))),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns)
        .map_err(|e| StoreError::Invalid(format!("building an outbox batch: {e}")))?;
    conn.appender("outbox")?.append_record_batch(batch)?;
    Ok(())
}

/// A due outbox row with the event as it stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The outbox row.
    pub rowid: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// The event; `None` when it is no longer in the store.
    pub event: Option<Forwarded>,
}

/// What a destination receives of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    /// Site name.
    pub site: String,
    /// The event's id: the idempotency key of every delivery.
    pub event_id: String,
    /// Its name.
    pub event_name: String,
    /// Source of the kept copy.
    pub source: String,
    /// Sources that sent a copy.
    pub sources_seen: Vec<String>,
    /// When it happened, µs.
    pub occurred_at: i64,
    /// When its first copy arrived, µs.
    pub received_at: i64,
    /// Page URL.
    pub url: Option<String>,
    /// Referrer.
    pub referrer: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Properties (JSON text).
    pub properties: Option<String>,
    /// Hashed user data (JSON text).
    pub user_data: Option<String>,
    /// The sender's user id.
    pub user_id: Option<String>,
    /// The sender's anonymous id.
    pub anonymous_id: Option<String>,
}

/// What a destination has waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Queue {
    /// Nothing pending.
    Idle,
    /// Pending rows, none due yet (a settle delay).
    Waiting,
    /// Due rows, oldest due first.
    Due(Vec<Due>),
}

/// Up to `limit` pending rows of `dest_id` (a destination of `site`) due
/// at `now`, with their events. The outbox alone is read first, so an idle
/// destination costs one small scan and never touches `events`.
pub fn due(conn: &Connection, dest_id: u32, site: &str, now: i64, limit: usize) -> Result<Queue> {
    let first: Option<bool> = conn
        .prepare_cached(
            "SELECT due_at <= ? FROM outbox WHERE dest_id = ? AND state = 'pending' \
             ORDER BY due_at LIMIT 1",
        )?
        .query_row(params![timestamp(now), dest_id], |r| r.get(0))
        .optional()?;
    match first {
        None => return Ok(Queue::Idle),
        Some(false) => return Ok(Queue::Waiting),
        Some(true) => {}
    }
    let mut stmt = conn.prepare_cached(
        "WITH o AS (SELECT rowid AS rid, * FROM outbox \
                    WHERE dest_id = ? AND state = 'pending' AND due_at <= ? ORDER BY due_at, rid LIMIT ?) \
         SELECT o.rid, o.attempts, e.event_id, e.event_name, e.site, e.source, \
                e.seen_pixel, e.seen_server, e.seen_import, epoch_us(e.occurred_at), epoch_us(e.received_at), \
                e.url, e.referrer, e.session_id, e.properties::VARCHAR, e.user_data::VARCHAR, \
                e.user_id, e.anonymous_id \
         FROM o LEFT JOIN events e ON e.site = ? AND e.key_hash = o.key_hash \
              AND e.key_hash2 = o.key_hash2 AND e.received_at = o.window_start \
         ORDER BY o.due_at, o.rid",
    )?;
    let rows = stmt
        .query_map(params![dest_id, timestamp(now), limit as i64, site], |r| {
            let event = match r.get::<_, Option<String>>(2)? {
                None => None,
                Some(event_id) => {
                    let flags: [bool; 3] = [r.get(6)?, r.get(7)?, r.get(8)?];
                    Some(Forwarded {
                        event_id,
                        event_name: r.get(3)?,
                        site: r.get(4)?,
                        source: r.get(5)?,
                        sources_seen: ["pixel", "server", "import"]
                            .iter()
                            .zip(flags)
                            .filter(|(_, on)| *on)
                            .map(|(s, _)| (*s).to_owned())
                            .collect(),
                        occurred_at: r.get(9)?,
                        received_at: r.get(10)?,
                        url: r.get(11)?,
                        referrer: r.get(12)?,
                        session_id: r.get(13)?,
                        properties: r.get(14)?,
                        user_data: r.get(15)?,
                        user_id: r.get(16)?,
                        anonymous_id: r.get(17)?,
                    })
                }
            };
            Ok(Due {
                rowid: r.get(0)?,
                attempts: r.get::<_, i32>(1)?.max(0) as u32,
                event,
            })
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(Queue::Due(rows))
}

fn rowid_list(rowids: &[i64]) -> String {
    // Integers we formatted ourselves: no injection.
    rowids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Marks rows delivered.
pub fn delivered(conn: &Connection, rowids: &[i64], now: i64) -> Result<()> {
    if rowids.is_empty() {
        return Ok(());
    }
    conn.execute(
        &format!(
            "UPDATE outbox SET state = 'delivered', delivered_at = ?, last_error = NULL \
             WHERE rowid IN ({})",
            rowid_list(rowids)
        ),
        params![timestamp(now)],
    )?;
    Ok(())
}

/// Counts a failed attempt on rows; those at `max_attempts`, or failed for
/// good (`park`), are parked. Returns how many were parked.
pub fn failed(
    conn: &Connection,
    rowids: &[i64],
    error: &str,
    max_attempts: u32,
    park: bool,
) -> Result<u64> {
    if rowids.is_empty() {
        return Ok(0);
    }
    let mut stmt = conn.prepare(&format!(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?, \
         state = CASE WHEN ? OR attempts + 1 >= ? THEN 'parked' ELSE state END \
         WHERE rowid IN ({}) RETURNING state = 'parked'",
        rowid_list(rowids)
    ))?;
    let parked = stmt
        .query_map(params![error, park, max_attempts], |r| r.get::<_, bool>(0))?
        .collect::<duckdb::Result<Vec<bool>>>()?;
    Ok(parked.into_iter().filter(|p| *p).count() as u64)
}

/// Parks `dest_id`'s pending rows whose event arrived before `before`.
pub fn park_older(conn: &Connection, dest_id: u32, before: i64) -> Result<u64> {
    let n = conn.execute(
        "UPDATE outbox SET state = 'parked', \
         last_error = coalesce(last_error || '; ', '') || 'undelivered past the age limit' \
         WHERE dest_id = ? AND state = 'pending' AND window_start < ?",
        params![dest_id, timestamp(before)],
    )?;
    Ok(n as u64)
}

/// Puts `dest_id`'s parked rows back in line, due now; how many.
pub fn retry_parked(conn: &Connection, dest_id: u32, now: i64) -> Result<u64> {
    let n = conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, due_at = ? \
         WHERE dest_id = ? AND state = 'parked'",
        params![timestamp(now), dest_id],
    )?;
    Ok(n as u64)
}

/// Deletes delivered rows delivered before `before`.
pub fn forget_delivered(conn: &Connection, before: i64) -> Result<u64> {
    let n = conn.execute(
        "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < ?",
        params![timestamp(before)],
    )?;
    Ok(n as u64)
}

/// A destination's outbox counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows delivered (and not yet forgotten).
    pub delivered: u64,
    /// Rows waiting.
    pub pending: u64,
    /// Rows parked.
    pub parked: u64,
    /// Seconds the oldest pending row has waited since its event arrived.
    pub oldest_pending_secs: f64,
}

/// Counts per destination id.
pub fn counts(conn: &Connection, now: i64) -> Result<Vec<(u32, Counts)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT dest_id, count(*) FILTER (WHERE state = 'delivered'), \
         count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'parked'), \
         coalesce(? - epoch_us(min(window_start) FILTER (WHERE state = 'pending')), 0) \
         FROM outbox GROUP BY dest_id",
    )?;
    let rows = stmt
        .query_map(params![now], |r| {
            Ok((
                r.get::<_, i32>(0)? as u32,
                Counts {
                    delivered: r.get::<_, i64>(1)?.max(0) as u64,
                    pending: r.get::<_, i64>(2)?.max(0) as u64,
                    parked: r.get::<_, i64>(3)?.max(0) as u64,
                    oldest_pending_secs: r.get::<_, i64>(4)?.max(0) as f64 / 1e6,
                },
            ))
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}
