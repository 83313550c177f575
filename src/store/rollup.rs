//! Rollups: what the dashboard counts, pre-counted for events that can no
//! longer change.
//!
//! An event is *sealed* once its dedup window has closed: no later copy
//! merges into it, replaces it or changes its sources (SPEC §3), and
//! retention deletes whole 15-minute slots of sealed events. So the counts
//! of sealed events per 15-minute UTC slot, event name and sources seen
//! (`rollup_events`; with url and referrer in `rollup_pages`; dropped copies
//! in `rollup_dropped`) stay exact for good. `rollup_state.horizon` says how
//! far they reach: every row of the site that arrived before it is counted,
//! none after. The upkeep task advances it an hour at a time, some time
//! after the site's window has closed on that hour ([`target`]).
//!
//! A card reads three disjoint parts ([`event_cells`]): the rollups' whole
//! slots inside the period, raw rows that arrived after the horizon (the
//! last window and a bit: ~7 % of 30 days by default), and raw rows in the
//! period's partial slots at either end. The horizon and the rollups are
//! read in one transaction, so a concurrent advance is seen whole or not at
//! all. Rollups built for a shorter window than the site has now are
//! ignored (rows they count could change again) and rebuilt; `tally sql
//! --write` empties them, since a hand-written change may touch any row.

use super::stats::{Scope, Where};
use super::{timestamp, transaction, Result};
use crate::domain::period::SLOT;
use duckdb::types::Value;
use duckdb::{params, Connection, OptionalExt};

const HOUR: i64 = 3_600_000_000;

/// How long after a window closes its events count as sealed: room for a
/// group decided just before and committed just after, and for the clock
/// stepping back a little.
pub const MARGIN: i64 = HOUR;

/// Arrival time one advance reads at most, so that the first build over a
/// large store runs as many short transactions.
pub const CHUNK: i64 = 24 * HOUR;

/// Where `site`'s horizon may go at `now`: the whole hour before which every
/// event's window (`window_secs`) closed at least [`MARGIN`] ago.
pub fn target(now: i64, window_secs: u32) -> i64 {
    (now - i64::from(window_secs) * 1_000_000 - MARGIN).div_euclid(HOUR) * HOUR
}

/// The horizon of `site`'s rollups, as the caller's transaction sees it: 0
/// when there are none, or when they were built for a shorter window than
/// `window_secs` (then nothing in them can be trusted until rebuilt).
pub fn horizon(conn: &Connection, site: &str, window_secs: u32) -> Result<i64> {
    let state: Option<(i64, u32)> = conn
        .prepare_cached(
            "SELECT epoch_us(horizon), window_secs::UINTEGER FROM rollup_state WHERE site = ?",
        )?
        .query_row([site], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match state {
        Some((h, w)) if w >= window_secs => h,
        _ => 0,
    })
}

/// What one call of [`advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The horizon moved to this instant (µs) and has further to go.
    Partway(i64),
    /// The horizon is where [`target`] allows.
    CaughtUp,
}

/// Moves `site`'s horizon toward [`target`] by at most [`CHUNK`] of arrival
/// time, in one transaction: counts the rows that arrived in between into
/// the rollups. Rollups of a shorter window are dropped first.
pub fn advance(conn: &Connection, site: &str, window_secs: u32, now: i64) -> Result<Advance> {
    let goal = target(now, window_secs);
    transaction(conn, |c| {
        let from = match horizon(c, site, window_secs)? {
            0 => {
                clear(c, Some(site))?;
                first_arrival(c, site)?.unwrap_or(goal).min(goal)
            }
            h => h,
        };
        if from >= goal {
            set_horizon(c, site, from.max(0), window_secs)?;
            return Ok(Advance::CaughtUp);
        }
        let to = goal.min(from + CHUNK);
        count_arrivals(c, site, from, to)?;
        set_horizon(c, site, to, window_secs)?;
        Ok(if to == goal {
            Advance::CaughtUp
        } else {
            Advance::Partway(to)
        })
    })
}

/// The first whole hour any row of `site` arrived in.
fn first_arrival(conn: &Connection, site: &str) -> Result<Option<i64>> {
    let first: Option<i64> = conn.query_row(
        "SELECT least((SELECT min(epoch_us(received_at)) FROM events WHERE site = $1), \
                      (SELECT min(epoch_us(received_at)) FROM duplicates WHERE site = $1))",
        [site],
        |r| r.get(0),
    )?;
    Ok(first.map(|t| t.div_euclid(HOUR) * HOUR))
}

/// Counts into the rollups the rows of `site` that arrived in `[from, to)`.
fn count_arrivals(conn: &Connection, site: &str, from: i64, to: i64) -> Result<()> {
    let arrived = "site = $1 AND received_at >= $2 AND received_at < $3";
    let slot = format!("make_timestamp(epoch_us(occurred_at) // {SLOT} * {SLOT})");
    let seen = SEEN;
    for sql in [
        format!(
            "INSERT INTO rollup_events SELECT site, {slot}, event_name, {seen}, count(*) \
             FROM events WHERE {arrived} GROUP BY ALL"
        ),
        format!(
            "INSERT INTO rollup_pages SELECT site, {slot}, event_name, {seen}, url, referrer, \
             count(*) FROM events WHERE {arrived} AND (url IS NOT NULL OR referrer IS NOT NULL) \
             GROUP BY ALL"
        ),
        format!(
            "INSERT INTO rollup_dropped SELECT site, \
             make_timestamp(epoch_us(received_at) // {SLOT} * {SLOT}), event_name, source, \
             count(*) FROM duplicates WHERE {arrived} GROUP BY ALL"
        ),
    ] {
        conn.prepare_cached(&sql)?
            .execute(params![site, timestamp(from), timestamp(to)])?;
    }
    Ok(())
}

fn set_horizon(conn: &Connection, site: &str, horizon: i64, window_secs: u32) -> Result<()> {
    conn.execute("DELETE FROM rollup_state WHERE site = ?", [site])?;
    conn.execute(
        "INSERT INTO rollup_state VALUES (?, ?, ?)",
        params![site, timestamp(horizon), window_secs],
    )?;
    Ok(())
}

/// The rollup tables, each with its `site` and `slot` columns.
const TABLES: [&str; 3] = ["rollup_events", "rollup_pages", "rollup_dropped"];

/// Empties the rollups of `site`, or of every site: cards read raw rows
/// until the upkeep task has counted them again.
pub fn clear(conn: &Connection, site: Option<&str>) -> Result<()> {
    let (cond, p): (&str, Vec<Value>) = match site {
        Some(s) => ("WHERE site = ?", vec![Value::Text(s.to_owned())]),
        None => ("", vec![]),
    };
    for table in TABLES.iter().chain(&["rollup_state"]) {
        conn.execute(
            &format!("DELETE FROM {table} {cond}"),
            duckdb::params_from_iter(&p),
        )?;
    }
    Ok(())
}

/// Deletes `site`'s rollup slots before `cutoff` (a slot boundary), as
/// retention deletes the sealed events and dropped copies in them.
pub fn trim(conn: &Connection, site: &str, cutoff: i64) -> Result<()> {
    debug_assert_eq!(cutoff.rem_euclid(SLOT), 0);
    for table in TABLES {
        conn.execute(
            &format!("DELETE FROM {table} WHERE site = ? AND slot < ?"),
            params![site, timestamp(cutoff)],
        )?;
    }
    Ok(())
}

/// The mask of sources an event row was seen from, as the rollups keep it.
const SEEN: &str =
    "(seen_pixel::UTINYINT + 2 * seen_server::UTINYINT + 4 * seen_import::UTINYINT)::UTINYINT";

/// The whole slots inside `[from, to)`: `[ceil(from), floor(to))`.
pub fn whole_slots(from: i64, to: i64) -> (i64, i64) {
    let a = from.div_euclid(SLOT) * SLOT;
    let a = if a < from { a + SLOT } else { a };
    (a, to.div_euclid(SLOT) * SLOT)
}

/// A subquery of the scope's unique events as counted cells, with columns
/// `slot` (µs, the 15-minute UTC slot of `occurred_at`), `event_name`,
/// `seen` (mask), `url` and `referrer` when `pages`, and `n`: rollup rows
/// for whole slots inside the period, raw rows (n = 1) for the rest.
/// `pages` cells hold only events with a url or a referrer, and are taken
/// whenever the filter names a page or referrer.
pub(crate) fn event_cells(scope: &Scope, horizon: i64, pages: bool) -> Where {
    let f = &scope.filter;
    let pages = pages || f.page.is_some() || f.referrer.is_some();
    let extra = if pages { ", url, referrer" } else { "" };
    let raw_columns =
        format!("epoch_us(occurred_at) // {SLOT} * {SLOT} AS slot, event_name, {SEEN} AS seen{extra}, 1 AS n");
    let (from, to) = (scope.period.from, scope.period.to);
    let (a, b) = whole_slots(from, to);
    let all = scope.events();
    if horizon <= 0 || a >= b {
        return all.wrap(&format!("SELECT {raw_columns} FROM events WHERE "));
    }
    let tail = all
        .clone()
        .and("received_at >= ?", [timestamp(horizon)])
        .wrap(&format!("SELECT {raw_columns} FROM events WHERE "));
    let table = if pages {
        "rollup_pages"
    } else {
        "rollup_events"
    };
    let mut rolled = Where::default()
        .and("site = ?", [Value::Text(scope.site.clone())])
        .and("slot >= ? AND slot < ?", [timestamp(a), timestamp(b)]);
    for (column, value) in [
        ("event_name", &f.event),
        ("url", &f.page),
        ("referrer", &f.referrer),
    ] {
        if let Some(v) = value {
            rolled = rolled.and(&format!("{column} = ?"), [Value::Text(v.clone())]);
        }
    }
    if let Some(s) = f.source {
        rolled = rolled.and(&format!("seen & {} <> 0", s.bit()), []);
    }
    let rolled = rolled.wrap(&format!(
        "SELECT epoch_us(slot) AS slot, event_name, seen{extra}, n FROM {table} WHERE "
    ));
    let mut cells = tail.union(rolled);
    if a > from || b < to {
        let edges = all
            .and(
                "received_at < ? AND (occurred_at < ? OR occurred_at >= ?)",
                [timestamp(horizon), timestamp(a), timestamp(b)],
            )
            .wrap(&format!("SELECT {raw_columns} FROM events WHERE "));
        cells = cells.union(edges);
    }
    cells
}

/// A scalar subquery counting the scope's dropped copies that arrived in
/// the period: rollup slots inside it, raw rows for the rest. A page or
/// referrer filter reads raw rows only (the rollup has no url).
pub(crate) fn dropped_count(scope: &Scope, horizon: i64) -> Where {
    let f = &scope.filter;
    let (from, to) = (scope.period.from, scope.period.to);
    let raw = |lo: i64, hi: i64| {
        scope
            .dropped()
            .and(
                "received_at >= ? AND received_at < ?",
                [timestamp(lo), timestamp(hi)],
            )
            .wrap("SELECT count(*) FROM duplicates WHERE ")
            .paren()
    };
    let (a, b) = whole_slots(from, to);
    if horizon <= 0 || a >= b || f.page.is_some() || f.referrer.is_some() {
        return raw(from, to);
    }
    // Rollup slots [a, b) hold the copies that arrived in [a, min(b, h)).
    let c = a.max(b.min(horizon));
    let mut rolled = Where::default()
        .and("site = ?", [Value::Text(scope.site.clone())])
        .and("slot >= ? AND slot < ?", [timestamp(a), timestamp(b)]);
    if let Some(e) = &f.event {
        rolled = rolled.and("event_name = ?", [Value::Text(e.clone())]);
    }
    if let Some(s) = f.source {
        rolled = rolled.and("source = ?", [Value::Text(s.as_str().to_owned())]);
    }
    let rolled = rolled
        .wrap("SELECT coalesce(sum(n), 0)::BIGINT FROM rollup_dropped WHERE ")
        .paren();
    raw(from, a).plus(rolled).plus(raw(c, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_a_whole_hour_a_margin_after_the_window_closed() {
        let now = 1_000 * HOUR + 25 * 60_000_000;
        assert_eq!(target(now, 3600), 998 * HOUR);
        assert_eq!(target(1_000 * HOUR, 3600), 998 * HOUR);
        assert_eq!(target(1_000 * HOUR - 1, 3600), 997 * HOUR);
    }

    #[test]
    fn whole_slots_round_inward() {
        assert_eq!(whole_slots(0, 3 * SLOT), (0, 3 * SLOT));
        assert_eq!(whole_slots(1, 3 * SLOT - 1), (SLOT, 2 * SLOT));
        assert_eq!(whole_slots(SLOT + 5, SLOT + 6), (2 * SLOT, SLOT));
    }
}
