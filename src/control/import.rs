//! `tally import`: backfill from NDJSON, one event per line in the
//! `/v1/events` shape, through the same validation and dedup as live traffic.
//! Keys already anywhere in the store count as duplicates, so importing the
//! same file twice, or history that is already there, changes no count.
//!
//! Lines are read and parsed while the writer commits the chunk before
//! (two chunks in flight), and a chunk waits for room in the ingest queue
//! rather than failing when live traffic fills it. Progress (bytes read of
//! the file) is reported as the import goes, for the CLI's progress bar.

use super::ControlError;
use crate::app::App;
use crate::domain::{Event, EventError, Source};
use crate::ingest::{Answer, IngestError, Mode};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Events handed to the writer at a time.
const CHUNK: usize = 5_000;
/// Chunks queued for the writer at once.
const IN_FLIGHT: usize = 2;
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
    let mut tally = Tally::default();
    let mut pending: VecDeque<Answer> = VecDeque::new();
    let mut chunk = Vec::with_capacity(CHUNK);
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
            Some(Ok(event)) => chunk.push(event),
            Some(Err(e)) => tally.reject(at.lines, e),
        }
        if chunk.len() >= CHUNK {
            if pending.len() >= IN_FLIGHT {
                tally.settle(&mut pending)?;
            }
            let events = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            pending.push_back(ingest.submit_patiently(site.clone(), events, mode)?);
            progress(at);
        }
    }
    if !chunk.is_empty() {
        pending.push_back(ingest.submit_patiently(site.clone(), chunk, mode)?);
    }
    while !pending.is_empty() {
        tally.settle(&mut pending)?;
    }
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
