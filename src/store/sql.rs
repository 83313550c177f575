//! `tally sql`: one statement against the store, read-only unless asked.
//!
//! [`super::guard`] checks the text first (one statement; without `--write`
//! a read of the store's own tables only). Read-only queries then run inside
//! `BEGIN TRANSACTION READ ONLY`, so DuckDB itself refuses writes too; the
//! transaction is rolled back either way.

use super::{Result, StoreError};
use duckdb::types::{TimeUnit, Value};
use duckdb::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A query result: column names and rows of JSON values (numbers stay numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Json>>,
}

/// Runs one SQL statement; with `write == false` DuckDB refuses any change.
pub fn run(conn: &Connection, query: &str, write: bool) -> Result<Table> {
    super::guard::check(conn, query, write)?;
    let begin = if write {
        "BEGIN TRANSACTION"
    } else {
        "BEGIN TRANSACTION READ ONLY"
    };
    conn.execute_batch(begin)?;
    let result = run_statement(conn, query);
    if write && result.is_ok() {
        // The statement may have changed rows the rollups count: they are
        // counted again from the rows as they now are.
        if let Err(e) = super::rollup::clear(conn, None) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    let end = if write && result.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    conn.execute_batch(end)?;
    result.map_err(|e| {
        let msg = e.to_string();
        if !write && msg.contains("read-only") {
            StoreError::Invalid(format!(
                "{msg}\n(tally sql is read-only; add --write to change data)"
            ))
        } else {
            StoreError::Invalid(msg)
        }
    })
}

fn run_statement(conn: &Connection, query: &str) -> duckdb::Result<Table> {
    let mut stmt = conn.prepare(query)?;
    let mut rows = stmt.query([])?;
    let columns = rows.as_ref().map(|s| s.column_names()).unwrap_or_default();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns.len())
            .map(|i| row.get::<_, Value>(i).map(to_json))
            .collect::<duckdb::Result<Vec<_>>>()?;
        out.push(values);
    }
    Ok(Table { columns, rows: out })
}

/// A DuckDB value as JSON: numbers as numbers, times as ISO-like strings
/// (as DuckDB prints them), lists and structs as arrays and objects.
pub fn to_json(v: Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::TinyInt(n) => n.into(),
        Value::SmallInt(n) => n.into(),
        Value::Int(n) => n.into(),
        Value::BigInt(n) => n.into(),
        Value::UTinyInt(n) => n.into(),
        Value::USmallInt(n) => n.into(),
        Value::UInt(n) => n.into(),
        Value::UBigInt(n) => n.into(),
        Value::HugeInt(n) => i64::try_from(n)
            .map(Json::from)
            .unwrap_or_else(|_| (n as f64).into()),
        Value::UHugeInt(n) => u64::try_from(n)
            .map(Json::from)
            .unwrap_or_else(|_| (n as f64).into()),
        Value::Float(f) => {
            serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number)
        }
        Value::Double(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        Value::Decimal(d) => {
            let text = d.to_string();
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Json::String(text), Json::Number)
        }
        Value::Timestamp(unit, n) => Json::String(format_timestamp(to_micros(unit, n))),
        Value::Date32(days) => Json::String(
            chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
                .map_or_else(|| days.to_string(), |d| d.to_string()),
        ),
        Value::Time64(unit, n) => {
            let micros = to_micros(unit, n);
            let secs = micros.div_euclid(1_000_000);
            Json::String(
                chrono::NaiveTime::from_num_seconds_from_midnight_opt(
                    secs as u32,
                    (micros.rem_euclid(1_000_000) * 1_000) as u32,
                )
                .map_or_else(|| micros.to_string(), |t| t.to_string()),
            )
        }
        Value::Interval {
            months,
            days,
            nanos,
        } => Json::String(format!("{months} months {days} days {} us", nanos / 1_000)),
        Value::Text(s) | Value::Enum(s) => Json::String(s),
        Value::Blob(b) | Value::Geometry(b) => Json::String(hex::encode(b)),
        Value::List(items) | Value::Array(items) => {
            Json::Array(items.into_iter().map(to_json).collect())
        }
        Value::Struct(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v.clone())))
                .collect(),
        ),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (json_key(to_json(k.clone())), to_json(v.clone())))
                .collect(),
        ),
        Value::Union(inner) => to_json(*inner),
        other => Json::String(format!("{other:?}")),
    }
}

fn json_key(k: Json) -> String {
    match k {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

fn to_micros(unit: TimeUnit, n: i64) -> i64 {
    match unit {
        TimeUnit::Second => n * 1_000_000,
        TimeUnit::Millisecond => n * 1_000,
        TimeUnit::Microsecond => n,
        TimeUnit::Nanosecond => n / 1_000,
    }
}

/// Formats µs since the epoch the way DuckDB prints a `TIMESTAMP`.
pub fn format_timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || micros.to_string(),
        |t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&c).unwrap();
        c
    }

    #[test]
    fn numbers_stay_numbers() {
        let t = run(
            &conn(),
            "SELECT count(*) AS n, 1.5::DOUBLE AS d, sum(1) AS s, 'x' AS t",
            false,
        )
        .unwrap();
        assert_eq!(t.columns, ["n", "d", "s", "t"]);
        assert_eq!(
            t.rows,
            vec![vec![
                Json::from(1),
                Json::from(1.5),
                Json::from(1),
                Json::from("x")
            ]]
        );
    }

    #[test]
    fn read_only_refuses_writes_and_write_allows_them() {
        let c = conn();
        let err = run(&c, "INSERT INTO settings VALUES ('a', 'b')", false).unwrap_err();
        assert!(err.to_string().contains("--write"), "{err}");
        run(&c, "INSERT INTO settings VALUES ('a', 'b')", true).unwrap();
        let t = run(&c, "SELECT count(*) FROM settings", false).unwrap();
        assert_eq!(t.rows[0][0], Json::from(1));
    }

    #[test]
    fn timestamps_print_like_duckdb() {
        assert_eq!(
            format_timestamp(1_795_428_000_000_000),
            "2026-11-23 10:00:00"
        );
        assert_eq!(
            format_timestamp(1_795_428_000_500_000),
            "2026-11-23 10:00:00.500"
        );
    }
}
