//! Daily visitor salts. A visitor id is a keyed hash with the day's salt;
//! salts of past days are deleted, so yesterday's ids cannot be recomputed
//! and a visitor cannot be followed across days.

use super::Result;
use duckdb::{params, Connection, OptionalExt};

/// The salt of `day` (days since the epoch), created if missing; older salts
/// are deleted in the same transaction.
pub fn for_day(conn: &Connection, day: i64, fresh: impl FnOnce() -> String) -> Result<String> {
    let date = (chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(day))
        .date_naive()
        .to_string();
    super::transaction(conn, |c| {
        let existing: Option<String> = c
            .query_row(
                "SELECT salt FROM visitor_salts WHERE day = ?::DATE",
                [&date],
                |r| r.get(0),
            )
            .optional()?;
        let salt = match existing {
            Some(s) => s,
            None => {
                let s = fresh();
                c.execute(
                    "INSERT INTO visitor_salts VALUES (?::DATE, ?)",
                    params![date, s],
                )?;
                s
            }
        };
        c.execute("DELETE FROM visitor_salts WHERE day < ?::DATE", [&date])?;
        Ok(salt)
    })
}
