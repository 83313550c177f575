//! `tally export`: unique events of one site, optionally in a time range, to
//! Parquet, CSV or NDJSON through DuckDB's `COPY`. NDJSON rows have the
//! `/v1/events` event shape, so an export can be fed back to `tally import`.

use super::{Result, StoreError};
use duckdb::Connection;
use std::path::Path;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header.
    Csv,
    /// One JSON event per line.
    Ndjson,
}

const TABLE_COLUMNS: &str = "site, event_id, event_name, source, seen_pixel, seen_server, \
    seen_import, occurred_at, received_at, session_id, visitor_id, url, referrer, properties, \
    user_data, user_id, anonymous_id";

const EVENT_SHAPE: &str = "event_id, event_name, source, \
    strftime(occurred_at, '%Y-%m-%dT%H:%M:%S.%fZ') AS occurred_at, session_id, url, referrer, properties, \
    user_data, user_id, anonymous_id";

/// Writes `site`'s unique events with `occurred_at` in `[from, to)` (µs) to
/// `out`; returns the number of rows written.
pub fn export(
    conn: &Connection,
    site: &str,
    format: Format,
    out: &Path,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<u64> {
    let (columns, options) = match format {
        Format::Parquet => (TABLE_COLUMNS, "FORMAT parquet"),
        Format::Csv => (TABLE_COLUMNS, "FORMAT csv, HEADER true"),
        Format::Ndjson => (EVENT_SHAPE, "FORMAT json"),
    };
    let mut filter = format!("site = {}", super::literal(site));
    if let Some(from) = from {
        filter += &format!(" AND occurred_at >= make_timestamp({from})");
    }
    if let Some(to) = to {
        filter += &format!(" AND occurred_at < make_timestamp({to})");
    }
    let out = out
        .to_str()
        .ok_or_else(|| StoreError::Invalid(format!("{} is not a UTF-8 path", out.display())))?;
    let sql = format!(
        "COPY (SELECT {columns} FROM events WHERE {filter} ORDER BY occurred_at) TO {} ({options})",
        super::literal(out)
    );
    Ok(conn.execute(&sql, [])? as u64)
}
