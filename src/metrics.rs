//! Counters for `GET /metrics`, in Prometheus text format. Plain atomics:
//! every writer of a counter is on a hot path, and none needs a lock.

use crate::domain::Source;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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

/// The routes requests are counted by. Each route registers under its
/// [`Endpoint::as_str`] name, which is how the counting middleware finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/events`.
    Events,
    /// `POST /v1/pixel`.
    Pixel,
    /// `POST /v1/batch` and the single-message Segment / RudderStack routes.
    Segment,
    /// `POST /{version}/{site}/events`, Meta's Conversions API.
    Meta,
    /// `GET /tally.js`.
    Script,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// The dashboard page and its `/api/` calls.
    Dashboard,
    /// Anything else (unknown paths).
    Other,
}

impl Endpoint {
    /// Every endpoint, in counter order.
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Events,
        Endpoint::Pixel,
        Endpoint::Segment,
        Endpoint::Meta,
        Endpoint::Script,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::Dashboard,
        Endpoint::Other,
    ];

    /// The route name and the `endpoint` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Events => "events",
            Endpoint::Pixel => "pixel",
            Endpoint::Segment => "segment",
            Endpoint::Meta => "meta",
            Endpoint::Script => "script",
            Endpoint::Health => "healthz",
            Endpoint::Metrics => "metrics",
            Endpoint::Dashboard => "dashboard",
            Endpoint::Other => "other",
        }
    }

    /// The endpoint a route name belongs to (`Other` for unnamed routes).
    pub fn of_route(name: Option<&str>) -> Endpoint {
        name.and_then(|n| Endpoint::ALL.into_iter().find(|e| e.as_str() == n))
            .unwrap_or(Endpoint::Other)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The statuses counted one by one; anything else counts under its class.
const STATUSES: [u16; 16] = [
    200, 204, 304, 400, 401, 403, 404, 405, 408, 413, 415, 429, 500, 503, 0, 1,
];
/// Slots for "other 2xx–4xx" (index 14) and "other 5xx" (index 15).
const OTHER_OK: usize = 14;
const OTHER_ERR: usize = 15;

fn status_slot(status: u16) -> usize {
    STATUSES[..OTHER_OK]
        .iter()
        .position(|s| *s == status)
        .unwrap_or(if status >= 500 { OTHER_ERR } else { OTHER_OK })
}

fn status_label(slot: usize) -> String {
    match slot {
        OTHER_OK => "other".into(),
        OTHER_ERR => "5xx".into(),
        s => STATUSES[s].to_string(),
    }
}

/// The appliance's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [[AtomicU64; 3]; 3],
    requests: [[AtomicU64; STATUSES.len()]; Endpoint::ALL.len()],
    dropped_messages: AtomicU64,
    connections: AtomicI64,
    queue_depth: AtomicU64,
    queue_oldest_micros: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    commit_rows: AtomicU64,
}

impl Metrics {
    /// Counts `n` copies from `source` that met `fate`.
    pub fn count(&self, source: Source, fate: Fate, n: u64) {
        if n > 0 {
            self.events[source.index() as usize][fate as usize].fetch_add(n, Relaxed);
        }
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: Endpoint, status: u16) {
        self.requests[endpoint.index()][status_slot(status)].fetch_add(1, Relaxed);
    }

    /// Requests answered so far for `endpoint` with `status`.
    pub fn requests(&self, endpoint: Endpoint, status: u16) -> u64 {
        self.requests[endpoint.index()][status_slot(status)].load(Relaxed)
    }

    /// Counts drop-in messages dropped alone because they failed validation.
    pub fn dropped_messages(&self, n: u64) {
        self.dropped_messages.fetch_add(n, Relaxed);
    }

    /// A connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.fetch_add(delta, Relaxed);
    }

    /// Sets the number of events waiting for the writer and how long the
    /// oldest of them has waited.
    pub fn set_queue(&self, depth: u64, oldest_micros: u64) {
        self.queue_depth.store(depth, Relaxed);
        self.queue_oldest_micros.store(oldest_micros, Relaxed);
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

    /// The Prometheus text exposition; `extra` is appended (gauges other
    /// parts of the appliance own, e.g. the forwarding outbox).
    pub fn render(&self, extra: &str) -> String {
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
        out += "# HELP tally_http_requests_total HTTP requests answered, by endpoint and status.\n";
        out += "# TYPE tally_http_requests_total counter\n";
        for endpoint in Endpoint::ALL {
            for slot in 0..STATUSES.len() {
                let n = self.requests[endpoint.index()][slot].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tally_http_requests_total{{endpoint=\"{}\",status=\"{}\"}} {n}",
                        endpoint.as_str(),
                        status_label(slot)
                    );
                }
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        gauge(
            &mut out,
            "tally_dropped_messages_total",
            "Drop-in (Segment, Meta) messages dropped alone for failing validation.",
            "counter",
            self.dropped_messages.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "tally_open_connections",
            "HTTP connections open now.",
            "gauge",
            self.connections.load(Relaxed).max(0).to_string(),
        );
        gauge(
            &mut out,
            "tally_ingest_queue_depth",
            "Events waiting for the writer.",
            "gauge",
            self.queue_depth.load(Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "tally_ingest_queue_oldest_seconds",
            "How long the oldest group the writer took had waited in the queue.",
            "gauge",
            format!("{:.6}", self.queue_oldest_micros.load(Relaxed) as f64 / 1e6),
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
        out += extra;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_round_trip() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::of_route(Some(e.as_str())), e);
        }
        assert_eq!(Endpoint::of_route(None), Endpoint::Other);
    }

    #[test]
    fn requests_count_by_endpoint_and_status() {
        let m = Metrics::default();
        m.request(Endpoint::Pixel, 204);
        m.request(Endpoint::Pixel, 204);
        m.request(Endpoint::Events, 418);
        m.request(Endpoint::Events, 599);
        let text = m.render("");
        assert!(text.contains("tally_http_requests_total{endpoint=\"pixel\",status=\"204\"} 2"));
        assert!(text.contains("tally_http_requests_total{endpoint=\"events\",status=\"other\"} 1"));
        assert!(text.contains("tally_http_requests_total{endpoint=\"events\",status=\"5xx\"} 1"));
    }
}
