//! The `settings` table: appliance-wide key/value pairs (e.g. the dashboard
//! password hash).

use super::Result;
use duckdb::{params, Connection, OptionalExt};

/// Key of the public URL the server last served on.
pub const PUBLIC_URL_KEY: &str = "public_url";

/// The value stored under `key`, if any.
pub fn get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM settings WHERE key = ?", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Stores `value` under `key`, replacing what was there.
pub fn set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    super::transaction(conn, |c| put(c, key, value))
}

/// [`set`] inside the caller's transaction.
pub fn put(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute("DELETE FROM settings WHERE key = ?", [key])?;
    conn.execute("INSERT INTO settings VALUES (?, ?)", params![key, value])?;
    Ok(())
}
