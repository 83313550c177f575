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

use super::events::SEEN;
use super::stats::{Filter, Scope, Where};
use super::{timestamp, transaction, Result};
use crate::domain::period::SLOT;
use crate::domain::SiteSettings;
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

/// The site settings rollups are counted under: rollups counted under
/// others are neither read nor advanced, but counted again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The dedup window, seconds: rollups of a shorter one may count rows
    /// that can still change.
    pub window_secs: u32,
    /// The revenue rule: the properties read for an amount, in order.
    pub revenue: Vec<String>,
}

impl Rules {
    /// The rules of a site as now set.
    pub fn of(settings: &SiteSettings) -> Rules {
        Rules {
            window_secs: settings.window_secs,
            revenue: settings
                .revenue_properties()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    fn revenue_rule(&self) -> String {
        serde_json::Value::from(self.revenue.clone()).to_string()
    }
}

/// The horizon of `site`'s rollups at `now`, as the caller's transaction
/// sees it: 0 when there are none, when they were counted for a shorter
/// window or another revenue rule than `rules`, or when the clock has gone
/// back so far that rows they count could be live again or rows arriving
/// now could land before the horizon, uncounted: then nothing in them is
/// read until counted again.
pub fn horizon(conn: &Connection, site: &str, rules: &Rules, now: i64) -> Result<i64> {
    Ok(match state(conn, site)? {
        Some((h, w, rule))
            if w >= rules.window_secs
                && rule == rules.revenue_rule()
                && h <= now - i64::from(rules.window_secs) * 1_000_000 =>
        {
            h
        }
        _ => 0,
    })
}

/// `site`'s row of `rollup_state`: the horizon (µs), and the window and
/// revenue rule the rollups were counted under.
fn state(conn: &Connection, site: &str) -> Result<Option<(i64, u32, String)>> {
    Ok(conn
        .prepare_cached(
            "SELECT epoch_us(horizon), window_secs::UINTEGER, revenue_rule \
             FROM rollup_state WHERE site = ?",
        )?
        .query_row([site], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?)
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
/// the rollups. Rollups that [`horizon`] would not read are dropped first
/// and counted again from the first arrival.
pub fn advance(conn: &Connection, site: &str, rules: &Rules, now: i64) -> Result<Advance> {
    let goal = target(now, rules.window_secs);
    transaction(conn, |c| {
        let from = match horizon(c, site, rules, now)? {
            0 => {
                clear(c, Some(site))?;
                let from = first_arrival(c, site)?.unwrap_or(goal).min(goal);
                set_horizon(c, site, from.max(0), rules)?;
                from
            }
            h => h,
        };
        if from >= goal {
            return Ok(Advance::CaughtUp);
        }
        let to = goal.min(from + CHUNK);
        count_arrivals(c, site, &rules.revenue, from, to)?;
        set_horizon(c, site, to, rules)?;
        Ok(if to == goal {
            Advance::CaughtUp
        } else {
            Advance::Partway(to)
        })
    })
}

/// Whether `site`'s rollups still count exactly the events and dropped
/// copies that arrived before their horizon (true when there are none): a
/// check against drift the rules above cannot see, such as a clock that
/// stepped back and forth again between two passes, or a write made with
/// another tool while Tally was stopped.
pub fn agrees(conn: &Connection, site: &str) -> Result<bool> {
    let agrees: Option<bool> = conn
        .query_row(
            "WITH h AS (SELECT horizon FROM rollup_state WHERE site = $1) \
             SELECT (SELECT coalesce(sum(n), 0) FROM rollup_events WHERE site = $1) \
                    = (SELECT count(*) FROM events WHERE site = $1 AND received_at < h.horizon) \
                AND (SELECT coalesce(sum(n), 0) FROM rollup_dropped WHERE site = $1) \
                    = (SELECT count(*) FROM duplicates WHERE site = $1 AND received_at < h.horizon) \
             FROM h",
            [site],
            |r| r.get(0),
        )
        .optional()?;
    Ok(agrees.unwrap_or(true))
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
fn count_arrivals(
    conn: &Connection,
    site: &str,
    revenue: &[String],
    from: i64,
    to: i64,
) -> Result<()> {
    let arrived = "site = $1 AND received_at >= $2 AND received_at < $3";
    let slot = format!("make_timestamp(epoch_us(occurred_at) // {SLOT} * {SLOT})");
    let seen = SEEN;
    let Money {
        parse,
        amount,
        currency,
    } = Money::new(revenue);
    let j = Money::ALIAS;
    for sql in [
        format!(
            "INSERT INTO rollup_events SELECT site, slot, event_name, seen, \
             CASE WHEN amount IS NOT NULL THEN currency END, \
             sum(amount)::DECIMAL(38,4), count(amount), count(*) \
             FROM (SELECT site, slot, event_name, seen, \
                   {amount} AS amount, {currency} AS currency \
                   FROM (SELECT site, {slot} AS slot, event_name, {seen} AS seen, {parse} AS {j} \
                         FROM events WHERE {arrived})) \
             GROUP BY ALL"
        ),
        format!(
            "INSERT INTO rollup_pages SELECT site, {slot}, event_name, {seen}, url, referrer, \
             count(*) FROM events WHERE {arrived} AND (url IS NOT NULL OR referrer IS NOT NULL) \
             GROUP BY ALL"
        ),
        format!(
            "INSERT INTO rollup_dropped SELECT site, \
             make_timestamp(epoch_us(received_at) // {SLOT} * {SLOT}), event_name, source, \
             currency, sum(revenue)::DECIMAL(38,4), count(revenue), count(*) \
             FROM duplicates WHERE {arrived} GROUP BY ALL"
        ),
    ] {
        conn.prepare_cached(&sql)?
            .execute(params![site, timestamp(from), timestamp(to)])?;
    }
    Ok(())
}

fn set_horizon(conn: &Connection, site: &str, horizon: i64, rules: &Rules) -> Result<()> {
    conn.execute("DELETE FROM rollup_state WHERE site = ?", [site])?;
    conn.execute(
        "INSERT INTO rollup_state VALUES (?, ?, ?, ?)",
        params![
            site,
            timestamp(horizon),
            rules.window_secs,
            rules.revenue_rule()
        ],
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
/// retention deletes the events in them that arrived before `window_closed`
/// and the dropped copies. Those are all the rollups count there, unless
/// the clock went back behind the horizon: then the rollups are emptied,
/// to be counted again.
pub fn trim(conn: &Connection, site: &str, cutoff: i64, window_closed: i64) -> Result<()> {
    debug_assert_eq!(cutoff.rem_euclid(SLOT), 0);
    if state(conn, site)?.is_some_and(|(h, _, _)| h > window_closed) {
        return clear(conn, Some(site));
    }
    for table in TABLES {
        conn.execute(
            &format!("DELETE FROM {table} WHERE site = ? AND slot < ?"),
            params![site, timestamp(cutoff)],
        )?;
    }
    Ok(())
}

/// The whole slots inside `[from, to)`: `[ceil(from), floor(to))`.
pub fn whole_slots(from: i64, to: i64) -> (i64, i64) {
    let a = from.div_euclid(SLOT) * SLOT;
    let a = if a < from { a + SLOT } else { a };
    (a, to.div_euclid(SLOT) * SLOT)
}

/// What a card counts of each unique event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Grain<'a> {
    /// Columns `slot` (µs, the 15-minute UTC slot of `occurred_at`),
    /// `event_name`, `seen` (mask), `n`.
    Counts,
    /// The same with `url` and `referrer`, of events that have either.
    Pages,
    /// `currency`, `amount` (NULL without one) and `n`, under these revenue
    /// properties (the site's rule, as the rollups were counted under).
    Revenue(&'a [String]),
}

/// An event's money under a revenue rule, read from one parse of its
/// `properties`: `parse` holds the rule's properties and `currency` as JSON
/// values, and `amount` and `currency` read that list (each a parse of one
/// small value). An extraction per property from the whole object parsed it
/// four to five times: ~55 ms more of a 300 ms revenue card at 100 M events.
pub(crate) struct Money {
    /// The list, to select `AS` [`Money::ALIAS`] from `events`.
    pub parse: String,
    /// The amount: the first rule property that holds a number or a numeric
    /// string, as a `DECIMAL(18,4)`; NULL without one.
    pub amount: String,
    /// The currency: the `currency` property when it is a string, spaces
    /// trimmed and upper-cased; NULL when empty or not a string.
    pub currency: String,
}

impl Money {
    /// The name `parse` is selected as.
    pub const ALIAS: &'static str = "j";

    /// The expressions for a revenue rule (its properties, in order).
    pub fn new(properties: &[String]) -> Money {
        let j = Self::ALIAS;
        let mut paths: Vec<String> = Vec::new();
        let mut path = |p: &str| {
            paths.push(super::literal(&super::conversions::json_path(p)));
            format!("{j}[{}]", paths.len())
        };
        let amounts: Vec<String> = properties
            .iter()
            .map(|p| {
                format!(
                    "TRY_CAST(json_extract_string({}, '$') AS DECIMAL(18,4))",
                    path(p)
                )
            })
            .collect();
        let c = path("currency");
        Money {
            parse: format!("json_extract(properties, [{}])", paths.join(", ")),
            amount: format!("coalesce({})", amounts.join(", ")),
            currency: format!(
                "CASE WHEN json_type({c}) = 'VARCHAR' \
                 THEN nullif(upper(trim(json_extract_string({c}, '$'))), '') END"
            ),
        }
    }
}

/// How a card selects its raw `events` rows: `columns`, from the rows
/// themselves or, for money, from their parsed properties ([`Money`]).
struct RawSelect {
    columns: String,
    parse: Option<String>,
}

impl RawSelect {
    /// The rows of `events` that `w` selects, as this select's columns.
    fn of(&self, w: Where) -> Where {
        match &self.parse {
            None => w.wrap(&format!("SELECT {} FROM events WHERE ", self.columns)),
            Some(parse) => w
                .wrap(&format!(
                    "SELECT {parse} AS {} FROM events WHERE ",
                    Money::ALIAS
                ))
                .paren()
                .wrap(&format!("SELECT {} FROM ", self.columns)),
        }
    }
}

impl Grain<'_> {
    /// How to select a raw `events` row, and the rollup table and columns
    /// that hold the same counts; no table when the filter needs raw rows.
    fn columns(&self, filter: &Filter) -> (RawSelect, Option<(&'static str, &'static str)>) {
        let by_page = filter.by_page();
        // occurred_at is never before 1970 (`Event::parse`), so `//` floors.
        let slot = format!("epoch_us(occurred_at) // {SLOT} * {SLOT} AS slot");
        let plain = |columns: String| RawSelect {
            columns,
            parse: None,
        };
        match self {
            Grain::Counts if !by_page => (
                plain(format!("{slot}, event_name, {SEEN} AS seen, 1 AS n")),
                Some(("rollup_events", "epoch_us(slot), event_name, seen, n")),
            ),
            Grain::Counts | Grain::Pages => (
                plain(format!(
                    "{slot}, event_name, {SEEN} AS seen, url, referrer, 1 AS n"
                )),
                Some((
                    "rollup_pages",
                    "epoch_us(slot), event_name, seen, url, referrer, n",
                )),
            ),
            Grain::Revenue(properties) => {
                let m = Money::new(properties);
                (
                    RawSelect {
                        columns: format!(
                            "{} AS currency, {} AS amount, 1 AS n",
                            m.currency, m.amount
                        ),
                        parse: Some(m.parse),
                    },
                    (!by_page).then_some(("rollup_events", "currency, revenue, revenue_events")),
                )
            }
        }
    }
}

/// A subquery of the scope's unique events as cells of `grain`: rollup rows
/// for the whole slots inside the period, raw rows (n = 1) for the rest.
/// A page or referrer filter reads `rollup_pages` (counts) or raw rows
/// (revenue).
pub(crate) fn event_cells(scope: &Scope, horizon: i64, grain: Grain) -> Where {
    let f = &scope.filter;
    let (select, rolled) = grain.columns(f);
    let raw = |w: Where| {
        let w = match grain {
            // Measured: 0.7 of the time of parsing every row (the amount of
            // a row without properties is NULL anyway); parsing the currency
            // of rows with an amount only gained nothing more.
            Grain::Revenue(_) => w.and("properties IS NOT NULL", []),
            _ => w,
        };
        select.of(w)
    };
    let (from, to) = (scope.period.from, scope.period.to);
    let (a, b) = whole_slots(from, to);
    let all = scope.events();
    let Some((table, columns)) = rolled.filter(|_| horizon > 0 && a < b) else {
        return raw(all);
    };
    let tail = raw(all.clone().and("received_at >= ?", [timestamp(horizon)]));
    let mut kept = Where::default()
        .and("site = ?", [Value::Text(scope.site.clone())])
        .and("slot >= ? AND slot < ?", [timestamp(a), timestamp(b)]);
    for (column, value) in [
        ("event_name", &f.event),
        ("url", &f.page),
        ("referrer", &f.referrer),
    ] {
        if let Some(v) = value {
            kept = kept.and(&format!("{column} = ?"), [Value::Text(v.clone())]);
        }
    }
    if let Some(s) = f.source {
        kept = kept.and(&format!("seen & {} <> 0", s.bit()), []);
    }
    let kept = kept.wrap(&format!("SELECT {columns} FROM {table} WHERE "));
    let mut cells = tail.union(kept);
    if a > from || b < to {
        cells = cells.union(raw(all.and(
            "received_at < ? AND (occurred_at < ? OR occurred_at >= ?)",
            [timestamp(horizon), timestamp(a), timestamp(b)],
        )));
    }
    cells
}

/// A subquery of the scope's dropped copies that arrived in the period, as
/// cells with columns `currency`, `revenue` (NULL without), `revenue_copies`
/// and `n`: rollup slots inside the period, raw rows for the rest. A page or
/// referrer filter reads raw rows only (the rollup has no url).
pub(crate) fn dropped_cells(scope: &Scope, horizon: i64) -> Where {
    let f = &scope.filter;
    let (from, to) = (scope.period.from, scope.period.to);
    let raw = |lo: i64, hi: i64| {
        scope
            .dropped()
            .and(
                "received_at >= ? AND received_at < ?",
                [timestamp(lo), timestamp(hi)],
            )
            .wrap(
                "SELECT currency, revenue, (revenue IS NOT NULL)::BIGINT AS revenue_copies, \
                 1 AS n FROM duplicates WHERE ",
            )
    };
    let (a, b) = whole_slots(from, to);
    if horizon <= 0 || a >= b || f.by_page() {
        return raw(from, to);
    }
    // Rollup slots [a, b) hold the copies that arrived in [a, min(b, h)).
    let c = a.max(b.min(horizon));
    let mut kept = Where::default()
        .and("site = ?", [Value::Text(scope.site.clone())])
        .and("slot >= ? AND slot < ?", [timestamp(a), timestamp(b)]);
    if let Some(e) = &f.event {
        kept = kept.and("event_name = ?", [Value::Text(e.clone())]);
    }
    if let Some(s) = f.source {
        kept = kept.and("source = ?", [Value::Text(s.as_str().to_owned())]);
    }
    let kept = kept.wrap("SELECT currency, revenue, revenue_copies, n FROM rollup_dropped WHERE ");
    raw(from, a).union(kept).union(raw(c, to))
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

    /// The revenue rule as first written: one extraction per property
    /// from the whole object, and the currency's type and value (the
    /// paths as now built: `conversions` tests that they name exactly one
    /// property).
    fn reference(properties: &[&str]) -> (String, String) {
        let each: Vec<String> = properties
            .iter()
            .map(|p| {
                let path = crate::store::literal(&crate::store::conversions::json_path(p));
                format!("TRY_CAST(json_extract_string(properties, {path}) AS DECIMAL(18,4))")
            })
            .collect();
        let currency = "CASE WHEN json_type(properties, '$.currency') = 'VARCHAR' \
             THEN nullif(upper(trim(json_extract_string(properties, '$.currency'))), '') END";
        (
            format!("coalesce({})", each.join(", ")),
            currency.to_owned(),
        )
    }

    #[test]
    fn money_reads_what_one_extraction_per_property_reads() {
        let c = duckdb::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE events (properties JSON)")
            .unwrap();
        let fixtures = [
            r#"{"total": 367.57}"#,
            r#"{"value": "12.50", "currency": " usd "}"#,
            r#"{"revenue": 1e2, "currency": "eur"}"#,
            r#"{"value": null, "total": 5}"#,
            r#"{"value": 10, "revenue": "3.5", "total": 20}"#,
            r#"{"value": "abc", "revenue": 7}"#,
            r#"{"value": true, "currency": true}"#,
            r#"{"value": {"total": 1}, "total": [1, 2]}"#,
            r#"{"value": 0.12345678901234567890123}"#,
            r#"{"value": 12345678901234567890123}"#,
            r#"{"value": -0.0, "currency": 5}"#,
            r#"{"value": 99999999999999.99995}"#,
            r#"{"value": 1.23e-7, "currency": ""}"#,
            r#"{"value": "1e3", "currency": "  "}"#,
            r#"{"value": 1.5E+3, "currency": "\u0075sd"}"#,
            r#"{"t\u006ftal": 3, "currency": null}"#,
            r#"{"value": 1, "value": 2}"#,
            r#"{"we\"ird": 4, "amount": "  42  "}"#,
            r#"{"*": "8.5", "a/b~c": 2, "currency": "usd"}"#,
            r#"{"Value": 3, "currency": {"code": "usd"}}"#,
            r#"{"value": "  -7.25 ", "currency": "gbp\n"}"#,
            r#"{}"#,
            r#"[]"#,
            r#""text""#,
        ];
        for f in fixtures {
            c.execute("INSERT INTO events VALUES (?)", [f]).unwrap();
        }
        c.execute("INSERT INTO events VALUES (NULL)", []).unwrap();
        let rules: [&[&str]; 6] = [
            &["value", "revenue", "total"],
            &["amount"],
            &["we\"ird", "currency"],
            &["total"],
            &["*", "total"],
            &["a/b~c", "*"],
        ];
        for rule in rules {
            let owned: Vec<String> = rule.iter().map(|p| p.to_string()).collect();
            let m = Money::new(&owned);
            let (amount, currency) = reference(rule);
            let sql = format!(
                "SELECT count(*) FILTER (WHERE a IS DISTINCT FROM ra OR c IS DISTINCT FROM rc), \
                 count(a), count(c), count(*) \
                 FROM (SELECT {} AS a, {} AS c, ra, rc \
                       FROM (SELECT {} AS {}, {amount} AS ra, {currency} AS rc FROM events))",
                m.amount,
                m.currency,
                m.parse,
                Money::ALIAS
            );
            let (differ, amounts, currencies, rows): (i64, i64, i64, i64) = c
                .query_row(&sql, [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .unwrap();
            assert_eq!(rows, fixtures.len() as i64 + 1);
            assert_eq!(differ, 0, "rule {rule:?}: {differ} rows read differently");
            assert!(amounts > 0 && currencies > 0, "rule {rule:?} read nothing");
        }
    }

    #[test]
    fn whole_slots_round_inward() {
        assert_eq!(whole_slots(0, 3 * SLOT), (0, 3 * SLOT));
        assert_eq!(whole_slots(1, 3 * SLOT - 1), (SLOT, 2 * SLOT));
        assert_eq!(whole_slots(SLOT + 5, SLOT + 6), (2 * SLOT, SLOT));
    }
}
