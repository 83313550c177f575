//! `tally import`: backfill from NDJSON, one event per line in the
//! `/v1/events` shape, through the same validation and dedup as live traffic.
//! Keys already anywhere in the store count as duplicates, so importing the
//! same file twice, or history that is already there, changes no count.
//!
//! Lines are read and parsed in batches of [`LOOKUP`]; each batch's keys are
//! looked up in the store at once, on the import's own connection (one pass
//! over the key columns, however old the history), then handed to the writer
//! in chunks with what was found. The next batch is read and looked up while
//! the writer commits this one, and a chunk waits for room in the ingest
//! queue rather than failing when live traffic fills it. Keys committed after
//! a lookup are in the writer's live window, so nothing slips between the
//! two. Progress (bytes read of the file) is reported as the import goes,
//! for the CLI's progress bar.
//!
//! Run locally (no server), an import keeps its memory flat however long
//! the file: every [`FORGET_AFTER`] keys it waits until all it sent is
//! committed and lets the writer's key index go, since every batch's keys
//! are looked up in the store anyway and nothing else sends. Through a
//! running server the keys stay: live copies of them within the window
//! must be caught without a lookup.

use super::ControlError;
use crate::app::App;
use crate::domain::Site;
use crate::domain::{Event, EventError, Source};
use crate::ingest::{look_up_history, prepare, Answer, Ingest, IngestError, Mode};
use crate::store::Conn;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

/// Events whose keys are looked up in the store at once: each lookup reads
/// the key columns of the site's events, so fewer, larger lookups keep a
/// long backfill linear (measured: per 2,000 keys, a 200,000-line import ran
/// at 1,400 lines/s).
const LOOKUP: usize = 100_000;
/// Events handed to the writer at a time.
const CHUNK: usize = 5_000;
/// Chunks queued for the writer at once: a batch, and the next one's start.
const IN_FLIGHT: usize = LOOKUP / CHUNK + 2;
/// Keys (ids and secondary keys) a local import sends between two drains
/// that let the writer's key index go (~35 bytes a key: a 100 M-line file
/// would otherwise hold gigabytes). Each drain leaves one lookup
/// unoverlapped with the writer's commits.
const FORGET_AFTER: usize = 10 * LOOKUP;
/// DuckDB's memory limit for a local import (its default is 80 % of RAM):
/// each lookup reads the site's key columns, and DuckDB would keep every
/// block it read (measured, 10 M lines: peak RSS 974 MB with the default,
/// 535 MB with this; rows of 30 KB properties still import, spilling).
const LOCAL_MEMORY: &str = "256MB";
/// Rejected lines listed in the answer (all are counted).
const MAX_LISTED_ERRORS: usize = 100;

/// How far an import has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Bytes of the file read.
    pub bytes: u64,
    /// The file's size.
    pub total: u64,
    /// Lines read.
    pub lines: u64,
}

/// Counts of an import, summed as chunks are answered.
#[derive(Default)]
struct Tally {
    accepted: u64,
    deduplicated: u64,
    rejected: u64,
    errors: Vec<Value>,
}

impl Tally {
    /// Waits for the oldest chunk in flight and adds its outcome.
    fn settle(&mut self, pending: &mut VecDeque<Answer>) -> Result<(), ControlError> {
        let Some(rx) = pending.pop_front() else {
            return Ok(());
        };
        let outcome = rx
            .blocking_recv()
            .unwrap_or(Err(IngestError::Closed))
            .map_err(|e| {
                ControlError(format!("import stopped: {e}; lines before it are stored"))
            })?;
        self.accepted += outcome.accepted;
        self.deduplicated += outcome.deduplicated;
        Ok(())
    }

    fn reject(&mut self, line: u64, e: EventError) {
        self.rejected += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors
                .push(json!({"line": line, "code": e.code, "message": e.message}));
        }
    }
}

/// Hands an import's batches to the writer: looks up each batch's history,
/// queues it in chunks, and settles the oldest answers as room is needed.
struct Feeder<'a> {
    app: &'a App,
    ingest: &'a Ingest,
    /// The import's own connection, for the history lookups.
    conn: Conn,
    site: Arc<Site>,
    mode: Mode,
    pending: VecDeque<Answer>,
    tally: Tally,
    /// Keys sent since the writer's index last let go, when it may (a
    /// local import that stores); `None` when it may not.
    since_forget: Option<usize>,
}

impl Feeder<'_> {
    /// Looks up what the store holds of `batch`'s keys (id and secondary),
    /// then queues the batch in chunks with the answer.
    fn send(&mut self, batch: Vec<Event>) -> Result<(), ControlError> {
        // Settings changed during a long import apply from the next batch
        // (a shorter window must not be judged with the old one).
        self.site = self.app.site(&self.site.name)?;
        let copies = prepare(&self.site, batch);
        let keys = copies.len() + copies.iter().filter(|c| c.secondary.is_some()).count();
        let history = Arc::new(look_up_history(&self.conn, &self.site.name, &copies)?);
        let mut copies = copies.into_iter().peekable();
        while copies.peek().is_some() {
            let chunk: Vec<_> = copies.by_ref().take(CHUNK).collect();
            while self.pending.len() >= IN_FLIGHT {
                self.tally.settle(&mut self.pending)?;
            }
            let answer = self.ingest.submit_patiently(
                self.site.clone(),
                chunk,
                history.clone(),
                self.mode,
            )?;
            self.pending.push_back(answer);
        }
        if let Some(sent) = self.since_forget.as_mut() {
            *sent += keys;
            if *sent >= FORGET_AFTER {
                *sent = 0;
                while !self.pending.is_empty() {
                    self.tally.settle(&mut self.pending)?;
                }
                self.ingest.forget_keys();
            }
        }
        Ok(())
    }

    /// Waits for every chunk's answer; the import's counts.
    fn finish(mut self) -> Result<Tally, ControlError> {
        while !self.pending.is_empty() {
            self.tally.settle(&mut self.pending)?;
        }
        Ok(self.tally)
    }
}

/// Imports `path` into `site`; answers accepted / deduplicated / rejected.
/// With `dry_run`, decides every line as the import would and stores nothing.
/// `progress` hears how far it has come every few thousand lines.
pub fn run(
    app: &App,
    path: &Path,
    site: &str,
    dry_run: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value, ControlError> {
    let site = app.site(site)?;
    let file = std::fs::File::open(path)
        .map_err(|e| ControlError(format!("cannot open {}: {e}", path.display())))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let ingest = app.ingest()?;
    let mode = if dry_run {
        Mode::Test { history: true }
    } else {
        Mode::Import
    };
    if app.local {
        app.store.limit_memory(LOCAL_MEMORY)?;
    }
    let mut feeder = Feeder {
        app,
        ingest,
        conn: app.store.connect()?,
        site,
        mode,
        pending: VecDeque::new(),
        tally: Tally::default(),
        since_forget: (app.local && !dry_run).then_some(0),
    };
    let mut batch = Vec::with_capacity(LOOKUP);
    let mut at = Progress {
        total,
        ..Progress::default()
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| ControlError(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        at.bytes += n as u64;
        at.lines += 1;
        match parse_line(&raw) {
            None => {}
            Some(Ok(event)) => batch.push(event),
            Some(Err(e)) => feeder.tally.reject(at.lines, e),
        }
        if at.lines.is_multiple_of(CHUNK as u64) {
            progress(at);
        }
        if batch.len() >= LOOKUP {
            feeder.send(std::mem::replace(&mut batch, Vec::with_capacity(LOOKUP)))?;
        }
    }
    feeder.send(batch)?;
    let tally = feeder.finish()?;
    progress(at);
    Ok(json!({
        "accepted": tally.accepted,
        "deduplicated": tally.deduplicated,
        "rejected": tally.rejected,
        "errors": tally.errors,
    }))
}

/// One line: `None` for a blank line, else the event or why it is refused.
/// A line that is not UTF-8 is one rejected line, not the end of the import;
/// a byte-order mark is skipped.
fn parse_line(raw: &[u8]) -> Option<Result<Event, EventError>> {
    let line = match std::str::from_utf8(raw) {
        Ok(text) => text.trim_start_matches('\u{feff}').trim(),
        Err(_) => {
            return Some(Err(EventError::new(
                "invalid_encoding",
                "the line is not UTF-8",
            )))
        }
    };
    (!line.is_empty()).then(|| Event::parse(line, Source::Import))
}
