//! `tally backup`: a consistent copy of the whole store into a new DuckDB
//! file, taken while the server keeps serving. DuckDB's `COPY FROM DATABASE`
//! reads one snapshot inside a transaction, so the copy holds exactly the
//! commits before it started; ingest goes on meanwhile.
//!
//! Restore: stop `tally serve`, put the backup in place of
//! `DATA_DIR/tally.duckdb` (and remove any `tally.duckdb.wal` beside it),
//! start again.

use super::{Result, StoreError};
use duckdb::Connection;
use std::path::Path;

/// Copies every table of the store into a new file at `out`; refuses to
/// overwrite. Returns the number of events copied.
pub fn backup(conn: &Connection, out: &Path) -> Result<u64> {
    if out.exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists; back up to a new file",
            out.display()
        )));
    }
    let text = out
        .to_str()
        .ok_or_else(|| StoreError::Invalid(format!("{} is not a UTF-8 path", out.display())))?;
    let name: String = conn.query_row("SELECT current_database()", [], |r| r.get(0))?;
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    conn.execute_batch(&format!("ATTACH {} AS tally_backup", super::literal(text)))?;
    let copied = conn
        .execute_batch(&format!(
            "COPY FROM DATABASE {} TO tally_backup",
            ident(&name)
        ))
        .and_then(|()| {
            conn.query_row("SELECT count(*) FROM tally_backup.events", [], |r| {
                r.get::<_, i64>(0)
            })
        });
    let detached = conn.execute_batch("DETACH tally_backup");
    let rows = copied?;
    detached?;
    Ok(rows.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_holds_every_table_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tally.duckdb");
        let conn = Connection::open(&db).unwrap();
        super::super::schema::migrate(&conn).unwrap();
        conn.execute_batch("INSERT INTO settings VALUES ('k', 'v')")
            .unwrap();
        let out = dir.path().join("copy.duckdb");
        assert_eq!(backup(&conn, &out).unwrap(), 0);
        assert!(backup(&conn, &out).is_err(), "no overwrite");
        drop(conn);
        let copy = Connection::open(&out).unwrap();
        let v: String = copy
            .query_row("SELECT value FROM settings WHERE key = 'k'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(v, "v");
        let version: i64 = copy
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, super::super::schema::MIGRATIONS.len() as i64);
    }
}
