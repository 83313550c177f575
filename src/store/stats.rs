//! The dashboard's queries: per site, period and filter, over `events` and
//! `duplicates`. Times are UTC `TIMESTAMP`s; periods are half-open
//! `[from, to)` and computed in the site's zone by [`crate::domain::period`].
//! Charts group by 15-minute UTC slot in SQL and fold the slots into local
//! hours and days in Rust, since DuckDB here cannot convert zones.

use super::events::SEEN;
use super::rollup::{self, Grain};
use super::{timestamp, Result};
use crate::domain::period::Period;
use crate::domain::Source;
use crate::store::sql::format_timestamp;
use duckdb::types::Value;
use duckdb::{params, params_from_iter, Connection};
use serde::Serialize;

/// Narrows every card to some events: all given conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Only events of this name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Only events with this `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Only events with this `referrer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// Only events this source sent a copy of (and, for dropped copies,
    /// copies this source sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl Filter {
    /// Whether a page or referrer is asked for: a dropped copy matches it
    /// through the kept event of its id, which no rollup of copies holds.
    pub fn by_page(&self) -> bool {
        self.page.is_some() || self.referrer.is_some()
    }
}

/// What a card reads: one site's events in a period, under a filter.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Site name.
    pub site: String,
    /// The period, in the site's zone.
    pub period: Period,
    /// The filter.
    pub filter: Filter,
    /// The site's rules the rollups must have been counted under to be
    /// read ([`super::rollup::horizon`]).
    pub rules: rollup::Rules,
    /// When the card is read (µs): rollups ahead of the clock are not read.
    pub now: i64,
}

/// A SQL condition and its parameters, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Where {
    pub(crate) sql: String,
    pub(crate) params: Vec<Value>,
}

impl Where {
    /// Adds a condition, joined with `AND`.
    pub(crate) fn and(mut self, condition: &str, params: impl IntoIterator<Item = Value>) -> Self {
        if !self.sql.is_empty() {
            self.sql.push_str(" AND ");
        }
        self.sql.push_str(condition);
        self.params.extend(params);
        self
    }

    fn and_if(self, value: &Option<String>, condition: &str) -> Self {
        match value {
            Some(v) => self.and(condition, [Value::Text(v.clone())]),
            None => self,
        }
    }

    /// The text put after `prefix` (e.g. `SELECT … WHERE `).
    pub(crate) fn wrap(mut self, prefix: &str) -> Self {
        self.sql.insert_str(0, prefix);
        self
    }

    /// In parentheses.
    pub(crate) fn paren(self) -> Self {
        let mut w = self.wrap("(");
        w.sql.push(')');
        w
    }

    /// Two queries' rows, `UNION ALL`.
    pub(crate) fn union(self, other: Where) -> Self {
        self.join(" UNION ALL ", other)
    }

    fn join(mut self, glue: &str, other: Where) -> Self {
        self.sql.push_str(glue);
        self.sql.push_str(&other.sql);
        self.params.extend(other.params);
        self
    }
}

impl Scope {
    /// The site's events under the filter, at any time.
    pub(crate) fn any_time(&self) -> Where {
        let f = &self.filter;
        let w = Where::default()
            .and("site = ?", [Value::Text(self.site.clone())])
            .and_if(&f.event, "event_name = ?")
            .and_if(&f.page, "url = ?")
            .and_if(&f.referrer, "referrer = ?");
        match f.source {
            Some(s) => w.and(&format!("seen_{}", s.as_str()), []),
            None => w,
        }
    }

    /// How far the site's rollups reach, as `conn`'s transaction sees them.
    pub(crate) fn horizon(&self, conn: &Connection) -> Result<i64> {
        rollup::horizon(conn, &self.site, &self.rules, self.now)
    }

    /// The site's events under the filter that happened in the period.
    pub(crate) fn events(&self) -> Where {
        self.any_time().and(
            "occurred_at >= ? AND occurred_at < ?",
            [timestamp(self.period.from), timestamp(self.period.to)],
        )
    }

    /// The site's dropped copies under the filter, at any time: by name and
    /// the copy's own source; a page or referrer filter matches the kept
    /// event of the same name and id.
    pub(crate) fn dropped(&self) -> Where {
        let f = &self.filter;
        let mut w = Where::default()
            .and("site = ?", [Value::Text(self.site.clone())])
            .and_if(&f.event, "event_name = ?");
        if let Some(s) = f.source {
            w = w.and("source = ?", [Value::Text(s.as_str().to_owned())]);
        }
        if f.by_page() {
            // An uncorrelated IN: DuckDB hashes the matching events once
            // (measured at 100 M events: 5.4–6.4 s and 3.0 GB against
            // 6.9–8.4 s and 3.4 GB for the EXISTS it replaced).
            let kept = Where::default()
                .and("site = ?", [Value::Text(self.site.clone())])
                .and_if(&f.page, "url = ?")
                .and_if(&f.referrer, "referrer = ?");
            w = w.and(
                &format!(
                    "(event_name, event_id) IN (SELECT event_name, event_id FROM events WHERE {})",
                    kept.sql
                ),
                kept.params,
            );
        }
        w
    }
}

/// The numbers on the dashboard's cards.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Unique events in the range.
    pub unique_events: u64,
    /// Copies dropped in the range (by their arrival).
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
    /// The bucket's local start: a day (`2026-11-01`) or an hour with its
    /// offset (`2026-11-01T01:00:00-07:00`).
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
    /// `url` (of page views, unless an event filter names another event).
    Pages,
    /// `referrer` (of page views, unless an event filter names another event).
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

pub(crate) fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// The cards' numbers for `scope`; its `now` bounds "last 24 h".
pub fn summary(conn: &Connection, scope: &Scope) -> Result<Summary> {
    let horizon = scope.horizon(conn)?;
    let w = rollup::event_cells(scope, horizon, Grain::Counts);
    let sql = format!(
        "SELECT coalesce(sum(n), 0)::BIGINT, \
         coalesce(sum(n * (seen & 1 <> 0)::INTEGER), 0)::BIGINT, \
         coalesce(sum(n * (seen & 2 <> 0)::INTEGER), 0)::BIGINT, \
         coalesce(sum(n * (seen & 3 = 3)::INTEGER), 0)::BIGINT, \
         coalesce(sum(n * (seen & 3 = 0)::INTEGER), 0)::BIGINT \
         FROM ({})",
        w.sql
    );
    let (unique, pixel, server, both, import_only): (i64, i64, i64, i64, i64) = conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(&w.params), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let day_ago = scope.now - 86_400_000_000;
    let (dups, dups_24h) = if scope.filter.by_page() {
        dropped_by_kept_event(conn, scope, day_ago)?
    } else {
        let last_day = scope
            .dropped()
            .and("received_at >= ?", [timestamp(day_ago)])
            .wrap("SELECT count(*) FROM duplicates WHERE ")
            .paren();
        let d = rollup::dropped_cells(scope, horizon)
            .paren()
            .wrap("SELECT coalesce(sum(n), 0)::BIGINT FROM ")
            .paren();
        let sql = format!("SELECT {}, {}", d.sql, last_day.sql);
        let params = d.params.into_iter().chain(last_day.params);
        conn.prepare_cached(&sql)?
            .query_row(params_from_iter(params), |r| Ok((r.get(0)?, r.get(1)?)))?
    };
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

/// Copies dropped in the period and since `day_ago` under a page or
/// referrer filter, which no rollup holds: one pass over the raw rows, so
/// the events with that page are hashed once, not once a count (measured
/// at 100 M events: 4.6 s → 3.2 s).
fn dropped_by_kept_event(conn: &Connection, scope: &Scope, day_ago: i64) -> Result<(i64, i64)> {
    let (from, to) = (timestamp(scope.period.from), timestamp(scope.period.to));
    let day_ago = timestamp(day_ago);
    let rows = scope.dropped().and(
        "(received_at >= ? AND received_at < ? OR received_at >= ?)",
        [from.clone(), to.clone(), day_ago.clone()],
    );
    let sql = format!(
        "SELECT count(*) FILTER (WHERE received_at >= ? AND received_at < ?), \
         count(*) FILTER (WHERE received_at >= ?) FROM duplicates WHERE {}",
        rows.sql
    );
    let params = [from, to, day_ago].into_iter().chain(rows.params);
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(params), |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Unique events per local bucket of the period, split by who delivered
/// them; empty buckets included.
pub fn series(conn: &Connection, scope: &Scope) -> Result<Vec<Point>> {
    let w = rollup::event_cells(scope, scope.horizon(conn)?, Grain::Counts);
    // Measured at 10 M raw events: integer slots (the cells') and sums of
    // booleans run in a third of the time of `time_bucket` and `count(*)
    // FILTER (…)` (85 vs 250 ms). (Sums of no rows are NULL, but a slot
    // only exists with a row in it.)
    let sql = format!(
        "SELECT slot, \
         sum(n * (seen & 3 = 1)::INTEGER)::BIGINT, \
         sum(n * (seen & 3 = 2)::INTEGER)::BIGINT, \
         sum(n * (seen & 3 = 3)::INTEGER)::BIGINT, \
         sum(n)::BIGINT \
         FROM ({}) GROUP BY 1",
        w.sql
    );
    let slots = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(&w.params), |r| {
            let [pixel_only, server_only, both, all] =
                [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?].map(u);
            let import_only = all - pixel_only - server_only - both;
            Ok((
                r.get::<_, i64>(0)?,
                [pixel_only, server_only, both, import_only],
            ))
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    let period = scope.period;
    let bucket = period.bucket;
    Ok(period
        .fold(bucket, slots, add4)
        .into_iter()
        .map(
            |(start, [pixel_only, server_only, both, import_only])| Point {
                t: period.label(bucket, start),
                pixel_only,
                server_only,
                both,
                import_only,
            },
        )
        .collect())
}

/// Adds four counters.
pub(crate) fn add4(a: &mut [u64; 4], b: &[u64; 4]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// The `limit` most frequent event names, pages or referrers.
pub fn top(conn: &Connection, scope: &Scope, kind: TopKind, limit: u32) -> Result<Vec<Top>> {
    let page_views = if scope.filter.event.is_none() {
        " AND event_name = 'page.view'"
    } else {
        ""
    };
    let (column, extra) = match kind {
        TopKind::Events => ("event_name", String::new()),
        TopKind::Pages => ("url", format!(" AND url IS NOT NULL{page_views}")),
        TopKind::Referrers => ("referrer", format!(" AND referrer IS NOT NULL{page_views}")),
    };
    let grain = match kind {
        TopKind::Events => Grain::Counts,
        TopKind::Pages | TopKind::Referrers => Grain::Pages,
    };
    let w = rollup::event_cells(scope, scope.horizon(conn)?, grain);
    let sql = format!(
        "SELECT {column}, sum(n)::BIGINT AS n FROM ({}) WHERE true{extra} \
         GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?",
        w.sql
    );
    let params = w.params.into_iter().chain([Value::UInt(limit)]);
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(params), |r| {
            Ok(Top {
                value: r.get(0)?,
                count: u(r.get(1)?),
            })
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The `limit` unique events under the filter that arrived last, at any time.
pub fn recent(conn: &Connection, scope: &Scope, limit: u32) -> Result<Vec<Recent>> {
    let w = scope.any_time();
    let sql = format!(
        "SELECT event_name, event_id, source, epoch_us(occurred_at), url FROM events \
         WHERE {} ORDER BY received_at DESC LIMIT ?",
        w.sql
    );
    let params = w.params.into_iter().chain([Value::UInt(limit)]);
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(params), |r| {
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
    // The arrival of the newest limit-th event first, then the rows from
    // it on: a top-N that carries the ids through the sort of the whole
    // window took 1.7 s of 100 M events' 48 hours, this 0.5 s.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT event_name, event_id, {SEEN} FROM events \
         WHERE site = $1 AND received_at >= coalesce(( \
           SELECT received_at FROM events WHERE site = $1 AND received_at >= $2 \
           ORDER BY received_at DESC LIMIT 1 OFFSET {}), $2) \
         ORDER BY received_at DESC LIMIT {NEAR_MISS_LIMIT}",
        NEAR_MISS_LIMIT - 1
    ))?;
    let rows = stmt
        .query_map(params![site, timestamp(since)], |r| {
            Ok(crate::domain::near_miss::Seen {
                event_name: r.get(0)?,
                event_id: r.get(1)?,
                sources: r.get(2)?,
            })
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(crate::domain::near_miss::find(&rows))
}
