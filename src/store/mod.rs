//! DuckDB only: open and migrate the file, the rows the writer appends, the
//! sites registry's table, and the queries behind the CLI and dashboard.
//!
//! One [`Store`] is opened per process. DuckDB lets a single process hold a
//! file read-write; inside it, every user of the store takes its own
//! connection from [`Store::connect`] for a piece of work, and the ingest
//! writer owns one of its own ([`Store::connect_writer`]), through which
//! it lets DuckDB's block cache go when the store is idle ([`CacheRelease`]).

pub mod backup;
pub mod conversions;
pub mod events;
pub mod export;
pub mod guard;
pub mod inspect;
pub mod outbox;
pub mod rollup;
pub mod salts;
pub mod schema;
pub mod settings;
pub mod sites;
pub mod sql;
pub mod stats;

use duckdb::{AccessMode, Config, Connection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database file.
    #[error("{path} is in use by another process (is another `tally serve` running on this data dir without its control socket?)")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// A site name or key that does not exist.
    #[error("no site named {0:?}; `tally site list` shows the sites")]
    UnknownSite(String),
    /// A site name that is already taken.
    #[error("a site named {0:?} already exists")]
    SiteExists(String),
    /// The file was written by a newer Tally.
    #[error("the store is at schema version {found}, newer than this tally knows ({known}); run the newer tally, or restore a backup made by this one")]
    NewerSchema {
        /// The file's version.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// Input the store refuses (bad SQL, bad setting).
    #[error("{0}")]
    Invalid(String),
    /// DuckDB failed.
    #[error("database error: {0}")]
    Db(#[from] duckdb::Error),
    /// The file system failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The open DuckDB file.
pub struct Store {
    root: Mutex<Connection>,
    path: PathBuf,
    /// How many [`Conn`]s are open: the cache is let go only at zero.
    open: Arc<Mutex<usize>>,
    /// DuckDB's memory limit as it reads when nobody has set it.
    default_limit: String,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    /// Extension auto-install and auto-load are off: nothing reaches the network.
    ///
    /// The WAL is checkpointed at 256 MB instead of DuckDB's 16 MB: under
    /// load the default checkpointed about once a second inside a commit,
    /// rewriting the trailing row group each time (measured: p99 latency
    /// 190 ms → 33 ms and +20 % throughput at 4 senders). Replaying a
    /// 143 MB WAL after kill -9 took 2 s; the writer also checkpoints when idle.
    pub fn open(path: &Path) -> Result<Store> {
        let config = Config::default()
            .access_mode(AccessMode::ReadWrite)?
            .enable_autoload_extension(false)?
            .with("autoinstall_known_extensions", "false")?
            .with("checkpoint_threshold", "256MB")?;
        let conn = Connection::open_with_flags(path, config).map_err(|e| {
            if e.to_string().contains("lock") {
                StoreError::Locked {
                    path: path.to_owned(),
                }
            } else {
                StoreError::Db(e)
            }
        })?;
        schema::migrate(&conn)?;
        Ok(Store {
            default_limit: memory_limit(&conn)?,
            root: Mutex::new(conn),
            path: path.to_owned(),
            open: Arc::default(),
        })
    }

    /// A new connection to the same database, for one piece of work; the
    /// store counts it as in use until it is dropped.
    pub fn connect(&self) -> Result<Conn> {
        let conn = self.clone_root()?;
        *lock(&self.open) += 1;
        Ok(Conn {
            conn,
            _open: Open(self.open.clone()),
        })
    }

    /// Caps DuckDB's memory (its block cache and working memory) at
    /// `limit`, e.g. `"512MB"`, for the rest of this process; what does not
    /// fit spills to DuckDB's temporary files. The idle cache release then
    /// leaves the cache alone (a limit set by hand).
    pub fn limit_memory(&self, limit: &str) -> Result<()> {
        let sql = format!("SET memory_limit = {}", literal(limit));
        self.connect()?.execute_batch(&sql)?;
        Ok(())
    }

    /// The ingest writer's own connection, not counted as in use, and the
    /// means to let DuckDB's block cache go when the writer is idle.
    pub fn connect_writer(&self) -> Result<(Connection, CacheRelease)> {
        let release = CacheRelease {
            open: self.open.clone(),
            default_limit: self.default_limit.clone(),
            floor: 0,
        };
        Ok((self.clone_root()?, release))
    }

    fn clone_root(&self) -> Result<Connection> {
        Ok(lock(&self.root).try_clone()?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the WAL into the main file; called on clean shutdown.
    pub fn checkpoint(&self) -> Result<()> {
        self.connect()?.execute_batch("CHECKPOINT")?;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection from [`Store::connect`]: a [`Connection`] that counts as
/// the store in use while it lives.
pub struct Conn {
    // Fields drop in order: the connection closes (rolling back whatever
    // a panic left open) before it stops counting as open.
    conn: Connection,
    _open: Open,
}

impl std::ops::Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// Counts one [`Conn`] open until dropped.
struct Open(Arc<Mutex<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        *lock(&self.0) -= 1;
    }
}

/// Lets go of DuckDB's cache of blocks (what it read or wrote, kept until
/// memory runs short), so an idle server gives that memory back: ~16 MB
/// after a pixel load, ~300 MB on a 100 M-event store (BENCHMARKS).
/// DuckDB has no call for it but lowering its memory limit, which would
/// fail a query running meanwhile, so it is done only while no [`Conn`] is
/// open, and no [`Conn`] opens until the limit is back.
pub struct CacheRelease {
    open: Arc<Mutex<usize>>,
    default_limit: String,
    /// What DuckDB held right after the last release.
    floor: i64,
}

/// What [`CacheRelease::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Let the cache go.
    Done,
    /// Nothing to do: the cache grew by less than [`CacheRelease::SLACK`]
    /// since the last release, or a memory limit set by hand is left alone.
    Unneeded,
    /// A connection is open: try again later.
    Busy,
}

impl CacheRelease {
    /// Growth of the cache worth letting go.
    pub const SLACK: i64 = 8 << 20;

    /// Lets the cache go through `conn` (the writer's) if it grew by
    /// [`Self::SLACK`] since the last release and no [`Conn`] is open. A
    /// memory limit set with `tally sql --write` is left alone, and with it
    /// the cache: DuckDB shows a limit rounded, so it could not be set back
    /// exactly.
    pub fn release(&mut self, conn: &Connection) -> Result<Released> {
        let open = lock(&self.open);
        if *open > 0 {
            return Ok(Released::Busy);
        }
        if cached_bytes(conn)? < self.floor + Self::SLACK
            || memory_limit(conn)? != self.default_limit
        {
            return Ok(Released::Unneeded);
        }
        // DuckDB evicts what it can before it refuses a limit below what
        // is pinned (an "Out of Memory" error), so that refusal is no
        // failure here; the limit must come back whatever happened.
        let lowered = conn.execute_batch("SET memory_limit = '1MB'");
        if let Err(e) = conn.execute_batch("RESET memory_limit") {
            let default = format!("SET memory_limit = {}", literal(&self.default_limit));
            conn.execute_batch(&default)?;
            return Err(e.into());
        }
        if let Err(e) = lowered {
            if !e.to_string().contains("memory limit") {
                return Err(e.into());
            }
        }
        self.floor = cached_bytes(conn)?;
        Ok(Released::Done)
    }
}

/// The bytes DuckDB's buffer manager holds.
fn cached_bytes(conn: &Connection) -> Result<i64> {
    let sql = "SELECT coalesce(sum(memory_usage_bytes), 0)::BIGINT FROM duckdb_memory()";
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// DuckDB's memory limit as it reads (`18.7 GiB`).
fn memory_limit(conn: &Connection) -> Result<String> {
    let sql = "SELECT current_setting('memory_limit')";
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// Runs `f` in a transaction on `conn`: committed if it succeeds, rolled
/// back if it (or the commit) fails; the first error is the one returned.
pub fn transaction<T, E: From<duckdb::Error>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    conn.execute_batch("BEGIN TRANSACTION")?;
    let result = f(conn).and_then(|value| {
        conn.execute_batch("COMMIT")?;
        Ok(value)
    });
    if result.is_err() {
        // Nothing to undo when the commit itself failed and ended the
        // transaction; the error that matters is the one above.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// `s` as a SQL string literal (quotes doubled), for SQL text that cannot
/// take a parameter (paths DuckDB must see at bind time, `COPY`, `ATTACH`).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Microseconds since the epoch as a DuckDB `TIMESTAMP` value.
pub fn timestamp(micros: i64) -> duckdb::types::Value {
    duckdb::types::Value::Timestamp(duckdb::types::TimeUnit::Microsecond, micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_let_go_once_it_grew_and_no_connection_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.duckdb")).unwrap();
        let (writer, mut cache) = store.connect_writer().unwrap();
        writer
            .execute_batch(
                "CREATE TABLE t AS SELECT range AS n, md5(range::VARCHAR) AS s FROM range(2000000);
                 CHECKPOINT;",
            )
            .unwrap();
        let limit = |c: &Connection| memory_limit(c).unwrap();
        let before = limit(&writer);
        let reader = store.connect().unwrap();
        let n: i64 = reader
            .query_row("SELECT count(DISTINCT s) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2_000_000);
        let loaded = cached_bytes(&writer).unwrap();
        assert!(loaded > 16 << 20, "the scan left {loaded} bytes cached");

        assert_eq!(cache.release(&writer).unwrap(), Released::Busy);
        assert_eq!(cached_bytes(&writer).unwrap(), loaded);

        drop(reader);
        assert_eq!(cache.release(&writer).unwrap(), Released::Done);
        let left = cached_bytes(&writer).unwrap();
        assert!(left < loaded / 4, "{left} of {loaded} bytes still cached");
        assert_eq!(limit(&writer), before, "the memory limit is back");
        let reader = store.connect().unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t WHERE n < 1000", [], |r| r.get(0))
            .unwrap();
        assert!(n > 0, "the store reads on after the release");
        drop(reader);
        assert_eq!(
            cache.release(&writer).unwrap(),
            Released::Unneeded,
            "a read of one row group leaves less than the slack"
        );
        let reader = store.connect().unwrap();

        // A limit the user set is kept, and the cache with it.
        let _ = reader.query_row("SELECT count(DISTINCT s) FROM t", [], |r| {
            r.get::<_, i64>(0)
        });
        drop(reader);
        writer.execute_batch("SET memory_limit = '3GB'").unwrap();
        let (set, loaded) = (limit(&writer), cached_bytes(&writer).unwrap());
        assert!(loaded > CacheRelease::SLACK);
        assert_eq!(cache.release(&writer).unwrap(), Released::Unneeded);
        assert_eq!(limit(&writer), set);
        assert_eq!(cached_bytes(&writer).unwrap(), loaded);
    }
}
