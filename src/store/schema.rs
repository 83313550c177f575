//! Versioned migrations. Each entry of [`MIGRATIONS`] runs once, in order, in
//! its own transaction; `schema_version` records what ran. Never edit a
//! released migration: add the next one.
//!
//! All times are `TIMESTAMP` holding UTC (the bundled DuckDB has no ICU, so
//! `TIMESTAMPTZ` arithmetic would fail). The schema is public: the README
//! documents it and users query it directly.

use super::Result;
use duckdb::Connection;

/// The migrations, oldest first.
pub const MIGRATIONS: &[&str] = &[
    // 1: sites, unique events, dropped copies, settings, visitor salts.
    "
    CREATE TABLE sites (
        site_id          INTEGER   NOT NULL,
        name             VARCHAR   NOT NULL,
        site_key         VARCHAR   NOT NULL,
        token_hash       VARCHAR   NOT NULL,
        origins          VARCHAR[] NOT NULL,
        window_secs      INTEGER   NOT NULL DEFAULT 172800,
        policy           VARCHAR   NOT NULL DEFAULT 'first_wins',
        merge_properties BOOLEAN   NOT NULL DEFAULT true,
        daily_quota      BIGINT,
        created_at       TIMESTAMP NOT NULL
    );
    CREATE TABLE events (
        site        VARCHAR   NOT NULL,
        event_id    VARCHAR   NOT NULL,
        event_name  VARCHAR   NOT NULL,
        source      VARCHAR   NOT NULL,
        seen_pixel  BOOLEAN   NOT NULL,
        seen_server BOOLEAN   NOT NULL,
        seen_import BOOLEAN   NOT NULL,
        occurred_at TIMESTAMP NOT NULL,
        received_at TIMESTAMP NOT NULL,
        session_id  VARCHAR,
        visitor_id  VARCHAR,
        url         VARCHAR,
        referrer    VARCHAR,
        properties  JSON,
        key_hash    UBIGINT   NOT NULL,
        key_hash2   UINTEGER  NOT NULL
    );
    CREATE TABLE duplicates (
        site        VARCHAR   NOT NULL,
        event_id    VARCHAR   NOT NULL,
        event_name  VARCHAR   NOT NULL,
        source      VARCHAR   NOT NULL,
        received_at TIMESTAMP NOT NULL,
        kept_source VARCHAR   NOT NULL
    );
    CREATE TABLE settings (
        key   VARCHAR NOT NULL,
        value VARCHAR NOT NULL
    );
    CREATE TABLE visitor_salts (
        day  DATE    NOT NULL,
        salt VARCHAR NOT NULL
    );
    ",
];

/// Brings the schema up to the newest version.
pub fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        super::transaction(conn, |c| {
            c.execute_batch(sql)?;
            c.execute(
                "INSERT INTO schema_version VALUES (?, ?)",
                duckdb::params![
                    version,
                    super::timestamp(chrono::Utc::now().timestamp_micros())
                ],
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let v: i64 = conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
