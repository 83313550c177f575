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
    // 2: secondary keys, personal data, drop-in senders' user ids, the
    // trust and merge bounds, why each copy was dropped and the revenue it
    // carried, and per-site time zone, retention and revenue rule.
    "
    ALTER TABLE events ADD COLUMN user_data JSON;
    ALTER TABLE events ADD COLUMN user_id VARCHAR;
    ALTER TABLE events ADD COLUMN anonymous_id VARCHAR;
    ALTER TABLE events ADD COLUMN pixel_keys JSON;
    ALTER TABLE events ADD COLUMN merges UTINYINT DEFAULT 0;
    ALTER TABLE events ADD COLUMN skey_hash UBIGINT;
    ALTER TABLE events ADD COLUMN skey_hash2 UINTEGER;
    ALTER TABLE events ADD COLUMN fingerprint UINTEGER DEFAULT 0;
    ALTER TABLE duplicates ADD COLUMN rule VARCHAR DEFAULT 'same_key';
    ALTER TABLE duplicates ADD COLUMN matched_key VARCHAR DEFAULT 'event_id';
    ALTER TABLE duplicates ADD COLUMN matched_value VARCHAR;
    ALTER TABLE duplicates ADD COLUMN filled JSON;
    ALTER TABLE duplicates ADD COLUMN revenue DECIMAL(18,4);
    ALTER TABLE duplicates ADD COLUMN currency VARCHAR;
    ALTER TABLE duplicates ADD COLUMN replaced_by VARCHAR;
    ALTER TABLE sites ADD COLUMN secondary_keys JSON;
    ALTER TABLE sites ADD COLUMN timezone VARCHAR DEFAULT 'UTC';
    ALTER TABLE sites ADD COLUMN retain_days INTEGER;
    ALTER TABLE sites ADD COLUMN revenue_property VARCHAR;
    ",
    // 3: forwarding: destinations and the transactional outbox.
    "
    CREATE TABLE destinations (
        dest_id    INTEGER   NOT NULL,
        site       VARCHAR   NOT NULL,
        config     JSON      NOT NULL,
        created_at TIMESTAMP NOT NULL
    );
    CREATE TABLE outbox (
        dest_id      INTEGER   NOT NULL,
        site         VARCHAR   NOT NULL,
        event_id     VARCHAR   NOT NULL,
        event_name   VARCHAR   NOT NULL,
        key_hash     UBIGINT   NOT NULL,
        key_hash2    UINTEGER  NOT NULL,
        window_start TIMESTAMP NOT NULL,
        created_at   TIMESTAMP NOT NULL,
        due_at       TIMESTAMP NOT NULL,
        attempts     INTEGER   NOT NULL DEFAULT 0,
        state        VARCHAR   NOT NULL DEFAULT 'pending',
        last_error   VARCHAR,
        delivered_at TIMESTAMP
    );
    ",
    // 4: the outbox in two steps, so that ingest pays least. The writer
    // records, in the commit of each group, one `outbox_groups` row per
    // destination: the group's arrival time and how many of its new events
    // the destination wants (measured: a row per event there cost 10-13 %
    // of ingest, a row per group ~6 %; BENCHMARKS.md). The sender expands
    // those into per-event `outbox` rows, in one transaction with the
    // deletion of the group rows, as it gets to them. Per-event rows hold
    // numbers and a short state: the event's site, id and name are in
    // `events`, found by key and arrival time. Age limits count from
    // `window_start`, the event's first arrival.
    "
    CREATE TABLE outbox_v4 (
        dest_id      INTEGER   NOT NULL,
        key_hash     UBIGINT   NOT NULL,
        key_hash2    UINTEGER  NOT NULL,
        window_start TIMESTAMP NOT NULL,
        due_at       TIMESTAMP NOT NULL,
        attempts     INTEGER   NOT NULL DEFAULT 0,
        state        VARCHAR   NOT NULL DEFAULT 'pending',
        last_error   VARCHAR,
        delivered_at TIMESTAMP
    );
    INSERT INTO outbox_v4
        SELECT dest_id, key_hash, key_hash2, window_start, due_at, attempts, state,
               last_error, delivered_at
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    CREATE TABLE outbox_groups (
        dest_id     INTEGER   NOT NULL,
        received_at TIMESTAMP NOT NULL,
        events      INTEGER   NOT NULL
    );
    ",
    // 5: rollups (`store::rollup`): counts of sealed events — events whose
    // dedup window closed, so no copy can change them again — per 15-minute
    // UTC slot, kept beside the raw rows so that the dashboard reads a few
    // thousand rows instead of every event. `rollup_state.horizon` is how
    // far they reach: every event or dropped copy of the site that arrived
    // before it is counted, none after. `slot` is the slot's UTC start: of
    // `occurred_at` for events, of `received_at` for dropped copies. `seen`
    // is the mask of sources seen (1 pixel, 2 server, 4 import). Revenue is
    // summed under the site's revenue rule at the time (`revenue_rule`, the
    // properties as a JSON array).
    "
    CREATE TABLE rollup_state (
        site         VARCHAR   NOT NULL,
        horizon      TIMESTAMP NOT NULL,
        window_secs  INTEGER   NOT NULL,
        revenue_rule VARCHAR   NOT NULL
    );
    CREATE TABLE rollup_events (
        site           VARCHAR       NOT NULL,
        slot           TIMESTAMP     NOT NULL,
        event_name     VARCHAR       NOT NULL,
        seen           UTINYINT      NOT NULL,
        currency       VARCHAR,
        revenue        DECIMAL(38,4),
        revenue_events BIGINT        NOT NULL,
        n              BIGINT        NOT NULL
    );
    CREATE TABLE rollup_pages (
        site       VARCHAR   NOT NULL,
        slot       TIMESTAMP NOT NULL,
        event_name VARCHAR   NOT NULL,
        seen       UTINYINT  NOT NULL,
        url        VARCHAR,
        referrer   VARCHAR,
        n          BIGINT    NOT NULL
    );
    CREATE TABLE rollup_dropped (
        site           VARCHAR       NOT NULL,
        slot           TIMESTAMP     NOT NULL,
        event_name     VARCHAR       NOT NULL,
        source         VARCHAR       NOT NULL,
        currency       VARCHAR,
        revenue        DECIMAL(38,4),
        revenue_copies BIGINT        NOT NULL,
        n              BIGINT        NOT NULL
    );
    ",
    // 6: a property named `*` is read by the JSON Pointer `/*`
    // (`conversions::json_path`); the `$."*"` path before it was taken for
    // a wildcard and counted as no revenue. The rollups of a site whose
    // revenue rule names `*` are forgotten, to be counted again.
    "
    CREATE TEMP TABLE stale AS SELECT site FROM rollup_state
        WHERE list_contains(from_json(revenue_rule, '[\"VARCHAR\"]'), '*');
    DELETE FROM rollup_events WHERE site IN (SELECT site FROM stale);
    DELETE FROM rollup_pages WHERE site IN (SELECT site FROM stale);
    DELETE FROM rollup_dropped WHERE site IN (SELECT site FROM stale);
    DELETE FROM rollup_state WHERE site IN (SELECT site FROM stale);
    DROP TABLE stale;
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
    if current > MIGRATIONS.len() as i64 {
        return Err(super::StoreError::NewerSchema {
            found: current,
            known: MIGRATIONS.len() as i64,
        });
    }
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

    /// A store at schema version `version`.
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)",
        )
        .unwrap();
        for (i, sql) in MIGRATIONS[..version].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)",
                [i as i64 + 1],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn rollups_counted_under_a_revenue_rule_naming_a_star_are_forgotten_by_migration_6() {
        let conn = at_version(5);
        conn.execute_batch(
            r#"INSERT INTO rollup_state VALUES
                 ('star', '2026-11-20', 172800, '["*"]'),
                 ('starred', '2026-11-20', 172800, '["a*","total"]'),
                 ('shop', '2026-11-20', 172800, '["value","revenue","total"]');
               INSERT INTO rollup_events VALUES
                 ('star', '2026-11-19', 'buy', 2, 'USD', NULL, 0, 3),
                 ('starred', '2026-11-19', 'buy', 2, 'USD', 1.5, 1, 3),
                 ('shop', '2026-11-19', 'buy', 2, 'USD', 1.5, 1, 3);
               INSERT INTO rollup_pages VALUES ('star', '2026-11-19', 'view', 1, '/', NULL, 4);
               INSERT INTO rollup_dropped VALUES ('star', '2026-11-19', 'buy', 'pixel', NULL, NULL, 0, 1);"#,
        )
        .unwrap();
        migrate(&conn).unwrap();
        let sites = |table: &str| -> Vec<String> {
            conn.prepare(&format!("SELECT site FROM {table} ORDER BY site"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<duckdb::Result<_>>()
                .unwrap()
        };
        assert_eq!(sites("rollup_state"), ["shop", "starred"]);
        assert_eq!(sites("rollup_events"), ["shop", "starred"]);
        assert!(sites("rollup_pages").is_empty() && sites("rollup_dropped").is_empty());
    }

    #[test]
    fn the_outbox_keeps_its_rows_through_migration_4() {
        let conn = at_version(3);
        conn.execute_batch(
            "INSERT INTO outbox VALUES (1, 'shop', 'ord_1', 'order.completed', 7, 8, \
             '2026-11-23 10:00:00', '2026-11-23 10:00:00', '2026-11-23 10:01:00', 3, 'parked', \
             'HTTP 410', NULL)",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let row: (i32, i64, String, String) = conn
            .query_row(
                "SELECT dest_id, attempts, state, last_error FROM outbox WHERE key_hash = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(row, (1, 3, "parked".into(), "HTTP 410".into()));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn.execute_batch("INSERT INTO schema_version VALUES (999, now()::TIMESTAMP)")
            .unwrap();
        let err = migrate(&conn).unwrap_err().to_string();
        assert!(err.contains("999") && err.contains("newer"), "{err}");
    }
}
