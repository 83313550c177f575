//! `tally import`: backfill from NDJSON, one event per line in the
//! `/v1/events` shape, through the same validation and dedup as live traffic.
//! Keys already anywhere in the store count as duplicates, so importing the
//! same file twice, or history that is already there, changes no count.

use super::ControlError;
use crate::app::App;
use crate::domain::{Event, EventError, Source};
use crate::ingest::Mode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Events handed to the writer at a time.
const CHUNK: usize = 1_000;
/// Rejected lines listed in the answer (all are counted).
const MAX_LISTED_ERRORS: usize = 100;

/// Imports `path` into `site`; answers accepted / deduplicated / rejected.
/// With `dry_run`, decides every line as the import would and stores nothing.
pub fn run(app: &App, path: &Path, site: &str, dry_run: bool) -> Result<Value, ControlError> {
    let site = app.site(site)?;
    let file = std::fs::File::open(path)
        .map_err(|e| ControlError(format!("cannot open {}: {e}", path.display())))?;
    let ingest = app.ingest()?;
    let (mut accepted, mut deduplicated, mut rejected) = (0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut flush = |chunk: &mut Vec<Event>| -> Result<(), ControlError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mode = if dry_run {
            Mode::Test { history: true }
        } else {
            Mode::Import
        };
        let outcome = ingest
            .ingest_blocking(site.clone(), std::mem::take(chunk), mode)
            .map_err(|e| {
                ControlError(format!("import stopped: {e}; lines before it are stored"))
            })?;
        accepted += outcome.accepted;
        deduplicated += outcome.deduplicated;
        Ok(())
    };
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    for i in 0.. {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| ControlError(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        // A line that is not UTF-8 is one rejected line, not the end of the import.
        let parsed = std::str::from_utf8(&raw)
            .map_err(|_| EventError {
                code: "invalid_encoding",
                message: "the line is not UTF-8".into(),
            })
            .map(|line| line.trim_start_matches('\u{feff}').trim());
        let parsed = match parsed {
            Ok("") => continue,
            Ok(line) => Event::parse(line, Source::Import),
            Err(e) => Err(e),
        };
        match parsed {
            Ok(event) => chunk.push(event),
            Err(e) => {
                rejected += 1;
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push(json!({"line": i + 1, "code": e.code, "message": e.message}));
                }
            }
        }
        if chunk.len() >= CHUNK {
            flush(&mut chunk)?;
        }
    }
    flush(&mut chunk)?;
    Ok(json!({
        "accepted": accepted,
        "deduplicated": deduplicated,
        "rejected": rejected,
        "errors": errors,
    }))
}
