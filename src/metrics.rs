//! Counters for `GET /metrics`, in Prometheus text format. Plain atomics:
//! every writer of a counter is on a hot path, and none needs a lock.

use crate::domain::Source;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What an ingested copy became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Stored as a new unique event.
    Accepted,
    /// Dropped as a copy of an event already kept.
    Deduplicated,
    /// Refused by validation.
    Rejected,
}

const FATES: [Fate; 3] = [Fate::Accepted, Fate::Deduplicated, Fate::Rejected];

impl Fate {
    fn as_str(self) -> &'static str {
        match self {
            Fate::Accepted => "accepted",
            Fate::Deduplicated => "deduplicated",
            Fate::Rejected => "rejected",
        }
    }
}

/// The appliance's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [[AtomicU64; 3]; 3],
    requests: [AtomicU64; 4],
    queue_depth: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    commit_rows: AtomicU64,
}

/// Request kinds counted by [`Metrics::request`].
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    /// `POST /v1/events`.
    Events = 0,
    /// `POST /v1/pixel`.
    Pixel = 1,
    /// `GET /tally.js`.
    Script = 2,
    /// Anything else.
    Other = 3,
}

impl Metrics {
    /// Counts `n` copies from `source` that met `fate`.
    pub fn count(&self, source: Source, fate: Fate, n: u64) {
        if n > 0 {
            self.events[source.index() as usize][fate as usize].fetch_add(n, Relaxed);
        }
    }

    /// Counts one request.
    pub fn request(&self, endpoint: Endpoint) {
        self.requests[endpoint as usize].fetch_add(1, Relaxed);
    }

    /// Sets the number of events waiting for the writer.
    pub fn set_queue_depth(&self, n: u64) {
        self.queue_depth.store(n, Relaxed);
    }

    /// Records one group commit of `rows` rows that took `micros`.
    pub fn commit(&self, micros: u64, rows: u64) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_micros.fetch_add(micros, Relaxed);
        self.commit_rows.fetch_add(rows, Relaxed);
    }

    /// Copies counted for `source` and `fate` so far.
    pub fn events(&self, source: Source, fate: Fate) -> u64 {
        self.events[source.index() as usize][fate as usize].load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out += "# HELP tally_events_total Event copies received, by source and fate.\n";
        out += "# TYPE tally_events_total counter\n";
        for source in Source::ALL {
            for fate in FATES {
                let _ = writeln!(
                    out,
                    "tally_events_total{{source=\"{}\",fate=\"{}\"}} {}",
                    source.as_str(),
                    fate.as_str(),
                    self.events(source, fate)
                );
            }
        }
        out += "# HELP tally_http_requests_total HTTP requests, by endpoint.\n";
        out += "# TYPE tally_http_requests_total counter\n";
        for (i, name) in ["events", "pixel", "script", "other"].iter().enumerate() {
            let _ = writeln!(
                out,
                "tally_http_requests_total{{endpoint=\"{name}\"}} {}",
                self.requests[i].load(Relaxed)
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        gauge(
            &mut out,
            "tally_ingest_queue_depth",
            "Events waiting for the writer.",
            "gauge",
            self.queue_depth.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "tally_commits_total",
            "Group commits to DuckDB.",
            "counter",
            self.commits.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "tally_commit_seconds_total",
            "Time spent in group commits.",
            "counter",
            format!("{:.6}", self.commit_micros.load(Relaxed) as f64 / 1e6),
        );
        gauge(
            &mut out,
            "tally_commit_rows_total",
            "Rows (events and dropped copies) committed.",
            "counter",
            self.commit_rows.load(Relaxed).to_string(),
        );
        out
    }
}
