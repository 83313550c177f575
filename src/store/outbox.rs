//! Forwarding's tables: `destinations` (one JSON config per destination),
//! and the transactional outbox in two steps. In the commit of each group
//! of new events the writer records, per destination that wants some of
//! them, one `outbox_groups` row ([`mark`]); a committed event is thus never
//! lost to forwarding, and a dropped copy, never a new event, never gets
//! one. The sender expands group rows into per-event `outbox` rows
//! ([`expand`]) as it gets to them, reads due rows in pages joined with the
//! event as it stands then (so copies that merged in during the settle
//! delay go out too), and marks each row delivered or failed. A per-event
//! row is found again by its `rowid`.

use super::{timestamp, Result, StoreError};
use crate::domain::forward::{Destination, PAGE_VIEW};
use crate::domain::KeyHash;
use duckdb::{params, Connection, OptionalExt};
use serde::{Deserialize, Serialize};

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
        // Ids are never given again, even after the highest is removed:
        // metrics series and scripts name destinations by id.
        d.id = c.query_row(
            "SELECT coalesce(max(id), 0) + 1 FROM ( \
               SELECT max(dest_id) AS id FROM destinations \
               UNION ALL SELECT TRY_CAST(value AS INTEGER) FROM settings WHERE key = ?)",
            [LAST_DESTINATION_KEY],
            |r| r.get(0),
        )?;
        super::settings::put(c, LAST_DESTINATION_KEY, &d.id.to_string())?;
        let config = serde_json::to_string(&d).map_err(|e| StoreError::Invalid(e.to_string()))?;
        c.execute(
            "INSERT INTO destinations VALUES (?, ?, ?, ?)",
            params![d.id, d.site, config, timestamp(now)],
        )?;
        Ok::<_, StoreError>(d)
    })
}

/// The `settings` key of the highest destination id ever given.
const LAST_DESTINATION_KEY: &str = "last_destination_id";

/// Deletes a destination and its outbox rows; whether it existed.
pub fn remove_destination(conn: &Connection, id: u32) -> Result<bool> {
    Ok(super::transaction(conn, |c| {
        c.execute("DELETE FROM outbox WHERE dest_id = ?", [id])?;
        c.execute("DELETE FROM outbox_groups WHERE dest_id = ?", [id])?;
        Ok::<_, duckdb::Error>(c.execute("DELETE FROM destinations WHERE dest_id = ?", [id])? > 0)
    })?)
}

/// A group's new events that one destination wants, as the writer records
/// them in the group's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The destination.
    pub dest_id: u32,
    /// The group's arrival time: every new event of a group has it.
    pub received_at: i64,
    /// How many of them the destination wants.
    pub events: u32,
}

/// Records `marks`, in the caller's (the writer's) transaction: a prepared
/// row per destination, not a row per event, so a commit pays next to
/// nothing for forwarding.
pub fn mark(conn: &Connection, marks: &[Mark]) -> Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached("INSERT INTO outbox_groups VALUES (?, ?, ?)")?;
    for m in marks {
        stmt.execute(params![m.dest_id, timestamp(m.received_at), m.events])?;
    }
    Ok(())
}

/// Appends per-event outbox rows `(destination, key, arrival, due)`, in the
/// caller's transaction: for a group that cannot be told apart from an
/// earlier one by its arrival time (see [`Registry::group_arrived`]).
///
/// [`Registry::group_arrived`]: crate::forward::Registry::group_arrived
pub fn append(conn: &Connection, rows: &[(u32, KeyHash, i64, i64)]) -> Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, 0, 'pending', NULL, NULL)")?;
    for (dest, key, received_at, due) in rows {
        stmt.execute(params![
            dest,
            key.low(),
            key.high(),
            timestamp(*received_at),
            timestamp(*due)
        ])?;
    }
    Ok(())
}

/// The SQL condition on `e.event_name` that [`Destination::wants`] is.
fn wants_sql(d: &Destination) -> String {
    match &d.events {
        None => format!("e.event_name <> {}", super::literal(PAGE_VIEW)),
        Some(names) if names.is_empty() => "false".to_owned(),
        Some(names) => format!(
            "e.event_name IN ({})",
            names
                .iter()
                .map(|n| super::literal(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Expands up to `groups` of `d`'s oldest recorded groups (only those that
/// arrived before `before`, if given) into per-event outbox rows, due
/// after the settle delay, in `state` (`pending`, or `parked` with
/// `error`), and deletes those group rows, in one transaction. Returns the
/// group rows consumed (0: nothing to expand) and the outbox rows added.
///
/// Every new event a destination wants, arrived between its oldest and
/// newest group expanded here, belongs to one of those groups (the writer
/// commits groups in arrival order), so the events are found by time
/// range; a row already in the outbox is not added twice (two groups can
/// share a microsecond under a test's frozen clock).
pub fn expand(
    conn: &Connection,
    d: &Destination,
    groups: usize,
    before: Option<i64>,
    state: &str,
    error: Option<&str>,
) -> Result<(u64, u64)> {
    let before = before.unwrap_or(i64::MAX);
    let range: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT epoch_us(min(received_at)), epoch_us(max(received_at)) FROM \
             (SELECT received_at FROM outbox_groups WHERE dest_id = ? AND epoch_us(received_at) < ? \
              ORDER BY received_at LIMIT ?)",
        )?
        .query_row(params![d.id, before, groups as i64], |r| {
            Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
        })?;
    let Some((lo, hi)) = range else {
        return Ok((0, 0));
    };
    let (lo, hi) = (timestamp(lo), timestamp(hi));
    super::transaction(conn, |c| {
        let added = c.execute(
            &format!(
                "INSERT INTO outbox \
                 SELECT ?, e.key_hash, e.key_hash2, e.received_at, \
                        e.received_at + to_seconds(?::BIGINT), 0, ?, ?, NULL \
                 FROM events e \
                 WHERE e.site = ? AND e.received_at BETWEEN ? AND ? AND {} \
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.dest_id = ? \
                       AND o.window_start BETWEEN ? AND ? AND o.window_start = e.received_at \
                       AND o.key_hash = e.key_hash AND o.key_hash2 = e.key_hash2)",
                wants_sql(d)
            ),
            params![
                d.id,
                i64::from(d.settle_secs),
                state,
                error,
                d.site,
                lo.clone(),
                hi.clone(),
                d.id,
                lo.clone(),
                hi.clone()
            ],
        )?;
        let consumed = c.execute(
            "DELETE FROM outbox_groups WHERE dest_id = ? AND received_at BETWEEN ? AND ?",
            params![d.id, lo, hi],
        )?;
        Ok::<_, StoreError>((consumed as u64, added as u64))
    })
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

/// Counts per destination id; events of groups not expanded yet count as
/// pending.
pub fn counts(conn: &Connection, now: i64) -> Result<Vec<(u32, Counts)>> {
    let mut all: std::collections::BTreeMap<u32, Counts> =
        row_counts(conn, now)?.into_iter().collect();
    let mut stmt = conn.prepare_cached(
        "SELECT dest_id, sum(events), ? - epoch_us(min(received_at)) FROM outbox_groups GROUP BY dest_id",
    )?;
    let groups = stmt
        .query_map(params![now], |r| {
            Ok((
                r.get::<_, i32>(0)? as u32,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, i64>(2)?.max(0) as f64 / 1e6,
            ))
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    for (id, pending, oldest) in groups {
        let c = all.entry(id).or_default();
        c.pending += pending;
        c.oldest_pending_secs = c.oldest_pending_secs.max(oldest);
    }
    Ok(all.into_iter().collect())
}

fn row_counts(conn: &Connection, now: i64) -> Result<Vec<(u32, Counts)>> {
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
