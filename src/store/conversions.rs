//! The owner's view of money and conversions: revenue per currency over
//! unique events beside what the dropped copies carried, how much of each
//! conversion the pixel and the server saw, and funnels by session. Each
//! card is one or two queries over [`Scope`].

use super::rollup::{self, Grain};
use super::stats::{add4, u, Scope};
use super::Result;
use crate::domain::period::Bucket;
use duckdb::types::Value;
use duckdb::{params_from_iter, Connection};
use serde::Serialize;
use std::collections::BTreeMap;

/// Revenue in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Revenue {
    /// ISO 4217 code as sent, upper-cased; `None` for events that name none.
    pub currency: Option<String>,
    /// Exact sum over unique events in the period, as decimal text with
    /// four decimals (`DECIMAL(18,4)`).
    pub revenue: String,
    /// Unique events that carried revenue.
    pub events: u64,
    /// Exact sum the dropped copies carried ("over-count avoided"), by
    /// their arrival in the period.
    pub over_count_avoided: String,
    /// Dropped copies that carried revenue.
    pub dropped_copies: u64,
}

/// The DuckDB path of the top-level property `property`: `$."property"`
/// (quotes and backslashes escaped), except for the two names that form
/// cannot hold, `*` (DuckDB's path reader takes it for a wildcard even
/// quoted) and the empty name (a path error). Those are read as the JSON
/// Pointers `/*` and `/`; a pointer could name every property, but DuckDB
/// resolves one ~7 % slower per row (measured on the revenue parse at
/// 100 M events).
pub(crate) fn json_path(property: &str) -> String {
    match property {
        "*" | "" => format!("/{property}"),
        _ => format!(
            "$.\"{}\"",
            property.replace('\\', "\\\\").replace('"', "\\\"")
        ),
    }
}

/// Revenue per currency under the site's rule (the first of `properties`
/// that holds a number or a numeric string; currency from `currency`),
/// beside the revenue of the copies dedup dropped. Sums are `DECIMAL`s,
/// never floats.
pub fn revenue(conn: &Connection, scope: &Scope) -> Result<Vec<Revenue>> {
    let horizon = scope.horizon(conn)?;
    let properties = &scope.rules.revenue;
    let w = rollup::event_cells(scope, horizon, Grain::Revenue(properties));
    let sql = format!(
        "SELECT currency, sum(amount)::DECIMAL(38,4)::VARCHAR, sum(n)::BIGINT FROM ({}) \
         WHERE amount IS NOT NULL GROUP BY 1",
        w.sql
    );
    let mut out: BTreeMap<Option<String>, Revenue> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(w.params))?;
    while let Some(r) = rows.next()? {
        let entry = out.entry(r.get(0)?).or_default();
        entry.revenue = r.get(1)?;
        entry.events = u(r.get(2)?);
    }
    let d = rollup::dropped_cells(scope, horizon);
    let sql = format!(
        "SELECT currency, sum(revenue)::DECIMAL(38,4)::VARCHAR, sum(revenue_copies)::BIGINT \
         FROM ({}) WHERE revenue_copies > 0 GROUP BY 1",
        d.sql
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(d.params))?;
    while let Some(r) = rows.next()? {
        let entry = out.entry(r.get(0)?).or_default();
        entry.over_count_avoided = r.get(1)?;
        entry.dropped_copies = u(r.get(2)?);
    }
    Ok(out
        .into_iter()
        .map(|(currency, mut r)| {
            for sum in [&mut r.revenue, &mut r.over_count_avoided] {
                if sum.is_empty() {
                    *sum = "0.0000".to_owned();
                }
            }
            Revenue { currency, ..r }
        })
        .collect())
}

/// How the sources covered one event name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// The event name.
    pub event_name: String,
    /// Unique events in the period.
    pub unique: u64,
    /// Of those, how many the pixel sent a copy of.
    pub pixel: u64,
    /// How many the server sent a copy of.
    pub server: u64,
    /// How many both sent.
    pub both: u64,
    /// The same per local day of the period, oldest first.
    pub days: Vec<DayCoverage>,
}

/// One local day of a [`Coverage`] trend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DayCoverage {
    /// The local day, `YYYY-MM-DD`.
    pub day: String,
    /// Unique events.
    pub unique: u64,
    /// Seen by the pixel.
    pub pixel: u64,
    /// Seen by the server.
    pub server: u64,
    /// Seen by both.
    pub both: u64,
}

/// Event names listed by [`coverage`] at most.
pub const COVERAGE_NAMES: u32 = 50;

/// Names a server copy ever used, page views aside: the conversions. The
/// rollup holds the names of sealed events, the rest arrived after its
/// horizon.
const CONVERSIONS: &str = "SELECT event_name FROM rollup_events \
     WHERE site = $1 AND seen & 2 <> 0 AND event_name <> 'page.view' AND $2 > 0 \
     UNION SELECT event_name FROM events \
     WHERE site = $1 AND seen_server AND event_name <> 'page.view' AND received_at >= make_timestamp($2)";

/// Per conversion event name (any name a server copy ever used, page views
/// excluded): unique events in the period and how many the pixel, the
/// server and both saw, with a per-day trend. Names without events in the
/// period are listed with zeros.
pub fn coverage(conn: &Connection, scope: &Scope) -> Result<Vec<Coverage>> {
    let horizon = scope.horizon(conn)?;
    let (name_filter, name_param) = match &scope.filter.event {
        Some(e) => (" WHERE event_name = $3", Some(Value::Text(e.clone()))),
        None => ("", None),
    };
    let sql = format!(
        "SELECT DISTINCT event_name FROM ({CONVERSIONS}){name_filter} ORDER BY 1 LIMIT {COVERAGE_NAMES}"
    );
    let params = [Value::Text(scope.site.clone()), Value::BigInt(horizon)];
    let names: Vec<String> = conn
        .prepare_cached(&sql)?
        .query_map(
            params_from_iter(params.into_iter().chain(name_param)),
            |r| r.get(0),
        )?
        .collect::<duckdb::Result<_>>()?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let w = rollup::event_cells(scope, horizon, Grain::Counts);
    let listed = vec!["?"; names.len()].join(", ");
    let sql = format!(
        "SELECT event_name, slot, sum(n)::BIGINT, \
         sum(n * (seen & 1 <> 0)::INTEGER)::BIGINT, sum(n * (seen & 2 <> 0)::INTEGER)::BIGINT, \
         sum(n * (seen & 3 = 3)::INTEGER)::BIGINT \
         FROM ({}) WHERE event_name IN ({listed}) GROUP BY 1, 2",
        w.sql
    );
    let mut slots: BTreeMap<String, Vec<(i64, [u64; 4])>> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    let names_params = names.iter().map(|n| Value::Text(n.clone()));
    let mut rows = stmt.query(params_from_iter(w.params.into_iter().chain(names_params)))?;
    while let Some(r) = rows.next()? {
        let counts = [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?].map(u);
        slots
            .entry(r.get(0)?)
            .or_default()
            .push((r.get(1)?, counts));
    }
    let period = scope.period;
    Ok(names
        .into_iter()
        .map(|name| {
            let days = period.fold(Bucket::Day, slots.remove(&name).unwrap_or_default(), add4);
            let mut total = [0u64; 4];
            let days = days
                .into_iter()
                .map(|(start, counts)| {
                    add4(&mut total, &counts);
                    let [unique, pixel, server, both] = counts;
                    DayCoverage {
                        day: period.label(Bucket::Day, start),
                        unique,
                        pixel,
                        server,
                        both,
                    }
                })
                .collect();
            let [unique, pixel, server, both] = total;
            Coverage {
                event_name: name,
                unique,
                pixel,
                server,
                both,
                days,
            }
        })
        .collect())
}

/// One step of a funnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The event name.
    pub event_name: String,
    /// Sessions that reached this step.
    pub sessions: u64,
}

/// Sessions through `steps` (event names, in order) in the period: a
/// session counts at step N if it did step N at or after the first time it
/// reached step N−1. Events without a `session_id` take no part; the
/// scope's event filter is ignored (the steps name the events).
pub fn funnel(conn: &Connection, scope: &Scope, steps: &[String]) -> Result<Vec<Step>> {
    let mut scope = scope.clone();
    scope.filter.event = None;
    let w = scope.events();
    let mut ctes = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    for (i, name) in steps.iter().enumerate() {
        let reached = format!(
            "SELECT session_id, occurred_at FROM events \
             WHERE {} AND session_id IS NOT NULL AND event_name = ?",
            w.sql
        );
        params.extend(w.params.iter().cloned());
        params.push(Value::Text(name.clone()));
        ctes.push(if i == 0 {
            format!("s0 AS (SELECT session_id, min(occurred_at) AS t FROM ({reached}) GROUP BY 1)")
        } else {
            format!(
                "s{i} AS (SELECT e.session_id, min(e.occurred_at) AS t FROM ({reached}) e \
                 JOIN s{prev} p ON e.session_id = p.session_id AND e.occurred_at >= p.t GROUP BY 1)",
                prev = i - 1
            )
        });
    }
    let counts: Vec<String> = (0..steps.len())
        .map(|i| format!("(SELECT count(*) FROM s{i})"))
        .collect();
    let sql = format!("WITH {} SELECT {}", ctes.join(", "), counts.join(", "));
    let mut stmt = conn.prepare_cached(&sql)?;
    let counts: Vec<i64> = stmt.query_row(params_from_iter(params), |r| {
        (0..steps.len()).map(|i| r.get(i)).collect()
    })?;
    Ok(steps
        .iter()
        .zip(counts)
        .map(|(name, n)| Step {
            event_name: name.clone(),
            sessions: u(n),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::json_path;

    /// Each path reads the one top-level property of its name, however
    /// odd the name, and nothing nested under a name it looks like.
    #[test]
    fn a_json_path_names_exactly_one_top_level_property() {
        let c = duckdb::Connection::open_in_memory().unwrap();
        let names = [
            "*", "", "**", "a*", " ", ".", "a.b", "a/b", "/", "~", "~0", "~1", "a~b", "$", "$.x",
            "[0]", "0", "-1", "\"", "\\", "a\"b", "a'b", "é", "\t", "#", "?", "@", "a]",
        ];
        for name in names {
            let doc = serde_json::json!({
                name: "v",
                "other": "w",
                "a": {"b": "nested"},
            });
            let read: Option<String> = c
                .query_row(
                    "SELECT json_extract_string(?::JSON, ?)",
                    [doc.to_string(), json_path(name)],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(read.as_deref(), Some("v"), "{name:?}");
        }
    }
}
