//! `tally import`: backfill from NDJSON, one event per line in the
//! `/v1/events` shape, through the same validation and dedup as live traffic.
//! Keys already anywhere in the store count as duplicates, so importing the
//! same file twice, or history that is already there, changes no count.
//!
//! Two readers go through the file. The scout, on its own thread, reads a
//! batch of lines ahead, computes their keys and looks them all up in the
//! store at once on its own connection: one pass over the site's key
//! columns, however old the history. The batch grows with the store
//! ([`lookup_lines`]), so that pass stays a small share of each line's cost
//! however large the store, and only keys are held ahead, never events. The
//! sender reads the same lines again, validates them and hands them to the
//! writer in chunks with what the scout found; a chunk waits for room in the
//! ingest queue rather than failing when live traffic fills it. Keys
//! committed after a lookup are in the writer's live window, so nothing
//! slips between the two. Progress (bytes read of the file) is reported as
//! the import goes, for the CLI's progress bar.
//!
//! Run locally (no server), an import keeps its memory flat however long
//! the file: after every [`FORGET_AFTER`] keys or more it waits until all it
//! sent is committed and lets the writer's key index go, and the scout's
//! next lookup starts only then, since every batch's keys are looked up in
//! the store anyway and nothing else sends. Through a running server the
//! keys stay: live copies of them within the window must be caught without
//! a lookup.

use super::ControlError;
use crate::app::App;
use crate::dedup::Copy;
use crate::domain::Site;
use crate::domain::{Event, EventError, Source};
use crate::ingest::{look_up_history, prepare, Answer, History, Ingest, IngestError, Keys, Mode};
use crate::store::Conn;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

/// Fewest lines whose keys are looked up at once (measured: per 2,000 keys,
/// a 200,000-line import ran at 1,400 lines/s).
const MIN_LOOKUP: usize = 100_000;
/// Most lines whose keys are looked up at once: ~16 to 32 MB of keys, and
/// as much again for what the store holds of them.
const MAX_LOOKUP: usize = 1_000_000;
/// Stored events a lookup's line may cost: each lookup reads the site's key
/// columns once (~9 ns an event on this machine's 2 cores), so a batch of
/// a hundredth of the store keeps that read near 1 µs a line, a seventh of
/// the writer's own cost.
const STORED_PER_LINE: u64 = 100;
/// Events handed to the writer at a time.
const CHUNK: usize = 5_000;
/// Chunks queued for the writer at once (110,000 events, ~0.8 s of its
/// work): the sender reads and validates lines meanwhile.
const IN_FLIGHT: usize = 22;
/// Fewest keys (ids and secondary keys) a local import sends between two
/// drains that let the writer's key index go (~35 bytes a key: a 100
/// M-line file would otherwise hold gigabytes). With large batches, at
/// least two batches' keys ([`forget_due`]): the lookup after a drain does
/// not overlap the writer's commits.
const FORGET_AFTER: usize = 1_000_000;
/// DuckDB's memory limit for a local import (its default is 80 % of RAM):
/// each lookup reads the site's key columns, and DuckDB would keep every
/// block it read (measured, 10 M lines: peak RSS 974 MB with the default,
/// 535 MB with this; rows of 30 KB properties still import, spilling).
const LOCAL_MEMORY: &str = "256MB";
/// Rejected lines listed in the answer (all are counted).
const MAX_LISTED_ERRORS: usize = 100;

/// Lines a large lookup batch may have per second of the site's dedup
/// window. A line repeating one committed after its batch's lookup began is
/// caught by the writer's index only while that key's window is open, and
/// up to two batches pass in between: at ~100,000 lines/s, two batches of
/// this size take a tenth of the window.
const LINES_PER_WINDOW_SECOND: u64 = 5_000;

/// Lines whose keys are looked up at once when the site has `stored`
/// events and a window of `window_secs`: a hundredth of the events, from
/// [`MIN_LOOKUP`] to [`MAX_LOOKUP`], and no more than a short window allows.
fn lookup_lines(stored: u64, window_secs: u32) -> usize {
    let most = (u64::from(window_secs) * LINES_PER_WINDOW_SECOND)
        .clamp(MIN_LOOKUP as u64, MAX_LOOKUP as u64);
    (stored / STORED_PER_LINE).clamp(MIN_LOOKUP as u64, most) as usize
}

/// Whether a local import lets the writer's index go after a batch of
/// `keys`, with `sent` keys sent since it last did (this batch's too).
fn forget_due(sent: usize, keys: usize) -> bool {
    sent >= FORGET_AFTER.max(2 * keys)
}

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

/// A file read line by line, as the import numbers its lines.
struct LineReader<'p> {
    path: &'p Path,
    reader: BufReader<File>,
    raw: Vec<u8>,
}

/// One line as read: its length in bytes, and `None` for a blank line, else
/// the event or why it is refused.
type Line = (u64, Option<Result<Event, EventError>>);

impl<'p> LineReader<'p> {
    fn open(path: &'p Path) -> Result<Self, ControlError> {
        let file = File::open(path)
            .map_err(|e| ControlError(format!("cannot open {}: {e}", path.display())))?;
        Ok(LineReader {
            path,
            reader: BufReader::with_capacity(1 << 20, file),
            raw: Vec::new(),
        })
    }

    /// The file's size, 0 when it cannot be read.
    fn size(&self) -> u64 {
        self.reader
            .get_ref()
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Whether opening the path again reads the same lines: a regular file,
    /// not a named pipe (`zcat backfill.gz > fifo`) or a device.
    fn rereadable(&self) -> bool {
        self.reader.get_ref().metadata().is_ok_and(|m| m.is_file())
    }

    /// The bytes of the line [`LineReader::next`] returned last.
    fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The next line, `None` at the end of the file.
    fn next(&mut self) -> Result<Option<Line>, ControlError> {
        self.raw.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.raw)
            .map_err(|e| ControlError(format!("cannot read {}: {e}", self.path.display())))?;
        Ok((n > 0).then(|| (n as u64, parse_line(&self.raw))))
    }
}

/// A batch of lines the scout read, with what it knows of their keys:
/// [`Keys`] before the lookup, [`Found`] after.
struct Batch<K> {
    /// The site as it was when the batch was read: a setting changed during
    /// a long import applies from the next batch, and a batch is decided
    /// with the settings its keys were computed with.
    site: Arc<Site>,
    /// Lines in the batch, blank and refused ones too.
    lines: u64,
    /// Their bytes, to check that the second read meets the same lines.
    bytes: u64,
    /// The lines themselves, when the file cannot be read twice.
    held: Option<Vec<u8>>,
    /// What is known of the lines' keys.
    keys: K,
}

impl<K> Batch<K> {
    /// The same lines with `f` of what is known of their keys.
    fn map<L>(self, f: impl FnOnce(K) -> L) -> Batch<L> {
        Batch {
            site: self.site,
            lines: self.lines,
            bytes: self.bytes,
            held: self.held,
            keys: f(self.keys),
        }
    }
}

/// What the scout's lookup found of a batch's keys.
struct Found {
    /// Keys looked up (ids and secondary keys).
    count: usize,
    /// What the store held of them.
    history: Arc<History>,
}

/// A batch the scout read and looked up.
type Looked = Batch<Found>;

/// Reads the file ahead of the sender, a batch at a time, and looks up each
/// batch's keys when the sender allows it.
struct Scout<'a> {
    app: &'a App,
    site: String,
    lines: LineReader<'a>,
    /// The import's own connection, for the lookups.
    conn: Conn,
    /// An upper bound of the site's stored events: those stored before the
    /// import and one for every line read since.
    stored: u64,
    /// Whether each batch's lines are held for the sender, when the file
    /// cannot be read twice; such batches stay at [`MIN_LOOKUP`] lines.
    hold: bool,
}

impl Scout<'_> {
    /// Reads batches until the end of the file, each looked up once
    /// `allowed` says so, and hands them to `found`; stops at the first error
    /// (handed on) or when the sender is gone.
    fn run(mut self, allowed: Receiver<()>, found: SyncSender<Result<Looked, ControlError>>) {
        loop {
            let looked = match self.read() {
                Ok(None) => return,
                Ok(Some(read)) => {
                    if allowed.recv().is_err() {
                        return;
                    }
                    self.look_up(read)
                }
                Err(e) => Err(e),
            };
            let failed = looked.is_err();
            if found.send(looked).is_err() || failed {
                return;
            }
        }
    }

    /// The next batch's keys, computed with the site as it is now; `None` at
    /// the end of the file. Refused lines have no key (the sender reports
    /// them).
    fn read(&mut self) -> Result<Option<Batch<Keys>>, ControlError> {
        let site = self.app.site(&self.site)?;
        let want = if self.hold {
            MIN_LOOKUP
        } else {
            lookup_lines(self.stored, site.settings.window_secs)
        };
        let (mut lines, mut bytes, mut keys) = (0, 0, Keys::default());
        let mut held = self.hold.then(Vec::new);
        while lines < want as u64 {
            let Some((n, line)) = self.lines.next()? else {
                break;
            };
            lines += 1;
            bytes += n;
            if let Some(held) = held.as_mut() {
                held.extend_from_slice(self.lines.raw());
            }
            if let Some(Ok(event)) = line {
                let (id, secondary) = Copy::keys(&site, &event);
                keys.push(id, secondary.map(|s| s.key));
            }
        }
        self.stored += lines;
        Ok((lines > 0).then_some(Batch {
            site,
            lines,
            bytes,
            held,
            keys,
        }))
    }

    fn look_up(&self, read: Batch<Keys>) -> Result<Looked, ControlError> {
        let history = look_up_history(&self.conn, &read.site.name, &read.keys)?;
        Ok(read.map(|keys| Found {
            count: keys.len(),
            history: Arc::new(history),
        }))
    }
}

/// Hands an import's batches to the writer: reads each batch's lines again,
/// queues them in chunks with what the scout found, and settles the oldest
/// answers as room is needed.
struct Feeder<'a> {
    ingest: &'a Ingest,
    path: &'a Path,
    /// Its own reader of the file; `None` when the file cannot be read
    /// twice and the scout holds each batch's lines.
    lines: Option<LineReader<'a>>,
    mode: Mode,
    pending: VecDeque<Answer>,
    tally: Tally,
    at: Progress,
    /// Keys sent since the writer's index last let go, when it may (a
    /// local import that stores); `None` when it may not.
    since_forget: Option<usize>,
}

impl Feeder<'_> {
    /// Sends every batch the scout finds, letting it look up the next one
    /// while this one is sent unless the writer's index lets go after this
    /// one: then only once it has (a key committed after a lookup started
    /// must still be in the index when its batch is decided).
    fn feed(
        &mut self,
        allow: Sender<()>,
        found: Receiver<Result<Looked, ControlError>>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), ControlError> {
        // A send fails only once the scout is done: nothing is left to allow.
        let _ = allow.send(());
        for batch in found {
            let batch = batch?;
            let forget = self.forgets_after(&batch);
            if !forget {
                let _ = allow.send(());
            }
            self.send(batch, progress)?;
            if forget {
                self.drain()?;
                self.ingest.forget_keys();
                let _ = allow.send(());
            }
        }
        Ok(())
    }

    /// Whether the writer's index lets go after `batch` (counting its keys).
    fn forgets_after(&mut self, batch: &Looked) -> bool {
        let Some(sent) = self.since_forget.as_mut() else {
            return false;
        };
        *sent += batch.keys.count;
        let due = forget_due(*sent, batch.keys.count);
        if due {
            *sent = 0;
        }
        due
    }

    /// Reads `batch`'s lines again (or takes those the scout held) and
    /// queues their events in chunks. The last chunk is queued only once
    /// the lines read are the bytes the scout read.
    fn send(
        &mut self,
        mut batch: Looked,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), ControlError> {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut bytes = 0;
        if let Some(raw) = batch.held.take() {
            for line in raw.split_inclusive(|b| *b == b'\n') {
                let n = line.len() as u64;
                bytes += n;
                self.take(&batch, (n, parse_line(line)), &mut chunk, progress)?;
            }
        } else {
            for _ in 0..batch.lines {
                let next = self.lines.as_mut().map(LineReader::next).transpose()?;
                let Some(line) = next.flatten() else {
                    break;
                };
                bytes += line.0;
                self.take(&batch, line, &mut chunk, progress)?;
            }
        }
        if bytes != batch.bytes {
            return Err(ControlError(format!(
                "{} changed while it was imported (near line {}); lines before it may be \
                 stored: import it again once it is complete (stored lines count as duplicates)",
                self.path.display(),
                self.at.lines
            )));
        }
        self.submit(&batch, chunk)
    }

    /// Counts one line read: its event joins `chunk` (the chunk is queued
    /// first if full), or it is rejected.
    fn take(
        &mut self,
        batch: &Looked,
        (bytes, line): Line,
        chunk: &mut Vec<Event>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), ControlError> {
        self.at.bytes += bytes;
        self.at.lines += 1;
        if self.at.lines.is_multiple_of(CHUNK as u64) {
            progress(self.at);
        }
        match line {
            None => Ok(()),
            Some(Err(e)) => {
                self.tally.reject(self.at.lines, e);
                Ok(())
            }
            Some(Ok(event)) => {
                if chunk.len() >= CHUNK {
                    let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK));
                    self.submit(batch, full)?;
                }
                chunk.push(event);
                Ok(())
            }
        }
    }

    /// Queues one chunk with its batch's history, once there is room.
    fn submit(&mut self, batch: &Looked, events: Vec<Event>) -> Result<(), ControlError> {
        if events.is_empty() {
            return Ok(());
        }
        while self.pending.len() >= IN_FLIGHT {
            self.tally.settle(&mut self.pending)?;
        }
        let answer = self.ingest.submit_patiently(
            batch.site.clone(),
            prepare(&batch.site, events),
            batch.keys.history.clone(),
            self.mode,
        )?;
        self.pending.push_back(answer);
        Ok(())
    }

    /// Waits for every chunk's answer.
    fn drain(&mut self) -> Result<(), ControlError> {
        while !self.pending.is_empty() {
            self.tally.settle(&mut self.pending)?;
        }
        Ok(())
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
    let first = LineReader::open(path)?;
    let total = first.size();
    // A pipe is read once, by the scout, which holds the lines for the sender.
    let (scout_lines, own_lines) = if first.rereadable() {
        (LineReader::open(path)?, Some(first))
    } else {
        (first, None)
    };
    let ingest = app.ingest()?;
    let mode = if dry_run {
        Mode::Test { history: true }
    } else {
        Mode::Import
    };
    if app.local {
        app.store.limit_memory(LOCAL_MEMORY)?;
    }
    let conn = app.store.connect()?;
    let scout = Scout {
        app,
        stored: crate::store::events::count(&conn, &site.name)?,
        site: site.name.clone(),
        hold: own_lines.is_none(),
        lines: scout_lines,
        conn,
    };
    let mut feeder = Feeder {
        ingest,
        mode,
        pending: VecDeque::new(),
        tally: Tally::default(),
        at: Progress {
            total,
            ..Progress::default()
        },
        path,
        lines: own_lines,
        since_forget: (app.local && !dry_run).then_some(0),
    };
    let (allow, allowed) = channel();
    let (found_tx, found) = sync_channel(1);
    std::thread::scope(|s| {
        s.spawn(move || scout.run(allowed, found_tx));
        feeder.feed(allow, found, progress)
    })?;
    feeder.drain()?;
    progress(feeder.at);
    let tally = feeder.tally;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_covers_a_hundredth_of_the_store_within_bounds() {
        let day = 86_400;
        assert_eq!(lookup_lines(0, day), MIN_LOOKUP);
        assert_eq!(lookup_lines(10_000_000, day), MIN_LOOKUP);
        assert_eq!(lookup_lines(30_000_000, day), 300_000);
        assert_eq!(lookup_lines(100_000_000, day), MAX_LOOKUP);
        assert_eq!(lookup_lines(u64::MAX, day), MAX_LOOKUP);
        assert_eq!(lookup_lines(100_000_000, 60), 300_000, "a short window");
        assert_eq!(lookup_lines(100_000_000, 1), MIN_LOOKUP);
        assert_eq!(lookup_lines(1_000_000, 60), MIN_LOOKUP);
    }

    #[test]
    fn the_index_lets_go_after_a_million_keys_or_two_batches_of_keys() {
        assert!(!forget_due(999_999, 200_000));
        assert!(forget_due(1_000_000, 200_000));
        assert!(!forget_due(2_000_000, 2_000_000), "one large batch");
        assert!(forget_due(4_000_000, 2_000_000));
    }
}
