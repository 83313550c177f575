//! The dashboard's queries: per site and time range, over `events` and
//! `duplicates`. Times are UTC `TIMESTAMP`s; ranges are half-open `[from, to)`.

use super::{timestamp, Result};
use crate::store::sql::format_timestamp;
use duckdb::{params, Connection};
use serde::Serialize;

/// A time range in µs since the epoch, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start, inclusive.
    pub from: i64,
    /// End, exclusive.
    pub to: i64,
}

impl Range {
    /// Chart bucket width for this range: hours up to 3 days, else days.
    pub fn bucket(self) -> &'static str {
        if self.to - self.from <= 3 * 86_400 * 1_000_000 {
            "hour"
        } else {
            "day"
        }
    }
}

/// The numbers on the dashboard's cards.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Unique events in the range.
    pub unique_events: u64,
    /// Copies dropped in the range.
    pub duplicates: u64,
    /// Copies dropped in the 24 hours before now.
    pub duplicates_24h: u64,
    /// duplicates / (unique + duplicates) in the range, 0..1.
    pub dedup_rate: f64,
    /// Unique events the pixel delivered (alone or with others).
    pub pixel: u64,
    /// Unique events the server delivered (alone or with others).
    pub server: u64,
    /// Unique events both the pixel and the server delivered.
    pub both: u64,
    /// Unique events that only came from imports.
    pub import_only: u64,
}

/// One bucket of the events-over-time chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Bucket start, `YYYY-MM-DD HH:MM:SS` UTC.
    pub t: String,
    /// Unique events only the pixel delivered.
    pub pixel_only: u64,
    /// Unique events only the server delivered.
    pub server_only: u64,
    /// Unique events both delivered.
    pub both: u64,
    /// Unique events from imports only.
    pub import_only: u64,
}

/// A row of a "top" list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Top {
    /// The event name, page or referrer.
    pub value: String,
    /// Unique events.
    pub count: u64,
}

/// Which column a "top" list ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopKind {
    /// `event_name`.
    Events,
    /// `url` of page views.
    Pages,
    /// `referrer` of page views.
    Referrers,
}

/// A recent unique event, for the live feed's first screen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recent {
    /// Event name.
    pub event_name: String,
    /// Sender's id.
    pub event_id: String,
    /// Source of the kept copy.
    pub source: String,
    /// When it happened, UTC.
    pub occurred_at: String,
    /// Page URL.
    pub url: Option<String>,
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// The cards' numbers for `site` in `range`; `now` bounds "last 24 h".
pub fn summary(conn: &Connection, site: &str, range: Range, now: i64) -> Result<Summary> {
    let (unique, pixel, server, both, import_only): (i64, i64, i64, i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), count(*) FILTER (WHERE seen_pixel), count(*) FILTER (WHERE seen_server), \
             count(*) FILTER (WHERE seen_pixel AND seen_server), \
             count(*) FILTER (WHERE NOT seen_pixel AND NOT seen_server) \
             FROM events WHERE site = ? AND occurred_at >= ? AND occurred_at < ?",
        )?
        .query_row(params![site, timestamp(range.from), timestamp(range.to)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let (dups, dups_24h): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE received_at >= ? AND received_at < ?), \
             count(*) FILTER (WHERE received_at >= ?) \
             FROM duplicates WHERE site = ? AND received_at >= least(?, ?)",
        )?
        .query_row(
            params![
                timestamp(range.from),
                timestamp(range.to),
                timestamp(now - 86_400_000_000),
                site,
                timestamp(range.from),
                timestamp(now - 86_400_000_000)
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    let total = unique + dups;
    Ok(Summary {
        unique_events: u(unique),
        duplicates: u(dups),
        duplicates_24h: u(dups_24h),
        dedup_rate: if total > 0 {
            dups as f64 / total as f64
        } else {
            0.0
        },
        pixel: u(pixel),
        server: u(server),
        both: u(both),
        import_only: u(import_only),
    })
}

/// Unique events per bucket, split by who delivered them; empty buckets included.
pub fn series(conn: &Connection, site: &str, range: Range) -> Result<Vec<Point>> {
    let bucket = range.bucket();
    let step = if bucket == "hour" { "1 HOUR" } else { "1 DAY" };
    let sql = format!(
        "WITH buckets AS ( \
            SELECT unnest(generate_series(date_trunc('{bucket}', ?::TIMESTAMP), ?::TIMESTAMP - INTERVAL 1 MICROSECOND, INTERVAL {step})) AS t), \
         counts AS ( \
            SELECT date_trunc('{bucket}', occurred_at) AS t, \
                   count(*) FILTER (WHERE seen_pixel AND NOT seen_server) AS pixel_only, \
                   count(*) FILTER (WHERE seen_server AND NOT seen_pixel) AS server_only, \
                   count(*) FILTER (WHERE seen_pixel AND seen_server) AS n_both, \
                   count(*) FILTER (WHERE NOT seen_pixel AND NOT seen_server) AS import_only \
            FROM events WHERE site = ? AND occurred_at >= ? AND occurred_at < ? GROUP BY 1) \
         SELECT epoch_us(b.t), coalesce(pixel_only, 0), coalesce(server_only, 0), coalesce(n_both, 0), coalesce(import_only, 0) \
         FROM buckets b LEFT JOIN counts c USING (t) ORDER BY 1"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(
            params![
                timestamp(range.from),
                timestamp(range.to),
                site,
                timestamp(range.from),
                timestamp(range.to)
            ],
            |r| {
                Ok(Point {
                    t: format_timestamp(r.get(0)?),
                    pixel_only: u(r.get(1)?),
                    server_only: u(r.get(2)?),
                    both: u(r.get(3)?),
                    import_only: u(r.get(4)?),
                })
            },
        )?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The `limit` most frequent event names, pages or referrers.
pub fn top(
    conn: &Connection,
    site: &str,
    range: Range,
    kind: TopKind,
    limit: u32,
) -> Result<Vec<Top>> {
    let (column, filter) = match kind {
        TopKind::Events => ("event_name", ""),
        TopKind::Pages => ("url", "AND event_name = 'page.view' AND url IS NOT NULL"),
        TopKind::Referrers => (
            "referrer",
            "AND event_name = 'page.view' AND referrer IS NOT NULL",
        ),
    };
    let sql = format!(
        "SELECT {column}, count(*) AS n FROM events \
         WHERE site = ? AND occurred_at >= ? AND occurred_at < ? {filter} \
         GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(
            params![site, timestamp(range.from), timestamp(range.to), limit],
            |r| {
                Ok(Top {
                    value: r.get(0)?,
                    count: u(r.get(1)?),
                })
            },
        )?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The `limit` unique events that arrived last.
pub fn recent(conn: &Connection, site: &str, limit: u32) -> Result<Vec<Recent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_name, event_id, source, epoch_us(occurred_at), url FROM events \
         WHERE site = ? ORDER BY received_at DESC LIMIT ?",
    )?;
    let rows = stmt
        .query_map(params![site, limit], |r| {
            Ok(Recent {
                event_name: r.get(0)?,
                event_id: r.get(1)?,
                source: r.get(2)?,
                occurred_at: format_timestamp(r.get(3)?),
                url: r.get(4)?,
            })
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Most events of a window the near-miss report reads (the newest).
pub const NEAR_MISS_LIMIT: u32 = 1_000_000;

/// The near-miss report over `site`'s events that arrived since `since`.
pub fn near_misses(
    conn: &Connection,
    site: &str,
    since: i64,
) -> Result<crate::domain::near_miss::Report> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_name, event_id, \
         (seen_pixel::UTINYINT + 2 * seen_server::UTINYINT + 4 * seen_import::UTINYINT)::UTINYINT \
         FROM events WHERE site = ? AND received_at >= ? ORDER BY received_at DESC LIMIT ?",
    )?;
    let rows = stmt
        .query_map(params![site, timestamp(since), NEAR_MISS_LIMIT], |r| {
            Ok(crate::domain::near_miss::Seen {
                event_name: r.get(0)?,
                event_id: r.get(1)?,
                sources: r.get(2)?,
            })
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(crate::domain::near_miss::find(&rows))
}
