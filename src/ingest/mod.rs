//! The ingest pipeline: a bounded queue in front of one writer thread that
//! owns the write connection and the dedup index.
//!
//! Requests hand their parsed events to [`Ingest::ingest`], which computes
//! each copy's keys on the caller's thread ([`Copy::prepare`]) and queues
//! them; the writer drains the queue in groups, decides "new or duplicate"
//! for each copy in memory, appends and updates in one DuckDB transaction,
//! commits, and only then answers each request (the durable ack of SPEC §3).
//! A full queue is refused at once ([`IngestError::QueueFull`], a 503)
//! instead of growing. [`Mode::Test`] jobs get the same decisions and write
//! nothing.

mod quota;
mod writer;

pub use crate::dedup::History;
pub use quota::{QuotaExceeded, Quotas};

use crate::dedup::{Copy, Decision};
use crate::domain::{Clock, Event, KeyHash, Site};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crossbeam_channel::{bounded, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{broadcast, oneshot};

/// Most events waiting for the writer before new requests get a 503.
pub const MAX_QUEUED_EVENTS: usize = 200_000;
/// Most requests waiting for the writer.
const MAX_QUEUED_JOBS: usize = 4_096;

/// What became of one request's events.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    /// New unique events stored.
    pub accepted: u64,
    /// Copies of events already kept.
    pub deduplicated: u64,
    /// Per event, what happened and why ([`Mode::Test`] only).
    pub decisions: Option<Vec<Decision>>,
}

/// How the writer treats a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live traffic: decided against the window, stored, acknowledged.
    Live,
    /// A backfill: keys older than the window count too (`tally import`).
    Import,
    /// Test mode: decided as live traffic (or an import, with `history`)
    /// would be, answered per event, and nothing stored or remembered.
    Test {
        /// Check the store's history as an import does.
        history: bool,
    },
}

impl Mode {
    /// Whether keys older than the window are looked up in the store.
    pub fn checks_history(self) -> bool {
        matches!(self, Mode::Import | Mode::Test { history: true })
    }
}

/// Why a request's events were not stored. Nothing of it was stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The queue is full; retry later.
    #[error("the ingest queue is full")]
    QueueFull,
    /// The store could not commit; retry later.
    #[error("the store could not write: {0}")]
    Store(String),
    /// The writer has stopped (shutting down).
    #[error("the writer has stopped")]
    Closed,
}

/// A unique event just committed, for the dashboard's live feed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedItem {
    /// Site name.
    pub site: String,
    /// Event name.
    pub event_name: String,
    /// Sender's id.
    pub event_id: String,
    /// Source of the kept copy.
    pub source: &'static str,
    /// When it happened, `YYYY-MM-DD HH:MM:SS` UTC.
    pub occurred_at: String,
    /// Page URL.
    pub url: Option<String>,
}

/// One request's worth of copies for the writer.
struct Job {
    site: Arc<Site>,
    copies: Vec<Copy>,
    mode: Mode,
    /// What the store held of the copies' keys, when the caller looked it
    /// up before queueing (`tally import`); else the writer looks it up for
    /// a mode that [checks history](Mode::checks_history).
    history: Option<Arc<History>>,
    queued_at: std::time::Instant,
    reply: Reply,
}

/// Where the writer sends a job's answer.
type Reply = oneshot::Sender<Result<Outcome, IngestError>>;

/// Where a job's answer arrives, after its commit.
pub type Answer = oneshot::Receiver<Result<Outcome, IngestError>>;

impl Job {
    /// A job for `copies` of `site` and the receiver of its answer.
    fn new(
        site: Arc<Site>,
        copies: Vec<Copy>,
        mode: Mode,
        history: Option<Arc<History>>,
    ) -> (Job, Answer) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            site,
            copies,
            mode,
            history,
            queued_at: std::time::Instant::now(),
            reply,
        };
        (job, rx)
    }
}

/// Keys to look up in the store: ids and secondary keys apart, since an id
/// never equals a secondary key and each is matched against its own column.
#[derive(Debug, Default)]
pub struct Keys {
    /// Id keys.
    pub ids: Vec<KeyHash>,
    /// Secondary keys.
    pub secondary: Vec<KeyHash>,
}

impl Keys {
    /// Adds a copy's id key and its secondary key, if any.
    pub fn push(&mut self, id: KeyHash, secondary: Option<KeyHash>) {
        self.ids.push(id);
        self.secondary.extend(secondary);
    }

    /// How many keys (ids and secondary).
    pub fn len(&self) -> usize {
        self.ids.len() + self.secondary.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> FromIterator<&'a Copy> for Keys {
    fn from_iter<I: IntoIterator<Item = &'a Copy>>(copies: I) -> Keys {
        let mut keys = Keys::default();
        for c in copies {
            keys.push(c.key, c.secondary.as_ref().map(|s| s.key));
        }
        keys
    }
}

/// What `site`'s stored events hold of `keys`, for a backfill: each key's
/// newest row as the index entry a rebuild would give it.
pub fn look_up_history(
    conn: &duckdb::Connection,
    site: &str,
    keys: &Keys,
) -> Result<History, StoreError> {
    let mut history = History::new();
    crate::store::events::existing_keys(conn, site, &keys.ids, &keys.secondary, |k, row| {
        let found = writer::entry(row);
        history
            .entry(k)
            .and_modify(|e| *e = e.later(found))
            .or_insert(found);
    })?;
    Ok(history)
}

/// The copies of `events`, their keys computed on the caller's thread (not
/// the writer's).
pub fn prepare(site: &Site, events: Vec<Event>) -> Vec<Copy> {
    events.into_iter().map(|e| Copy::prepare(site, e)).collect()
}

/// Handle to the writer thread.
pub struct Ingest {
    tx: Mutex<Option<Sender<Job>>>,
    queued: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    feed: broadcast::Sender<Arc<FeedItem>>,
    /// Set by [`Ingest::forget_keys`]; the writer empties its index.
    forget: Arc<AtomicBool>,
    /// Per-site daily quotas.
    pub quotas: Arc<Quotas>,
}

impl Ingest {
    /// Rebuilds the dedup index from the store, then starts the writer.
    pub fn start(
        store: &Store,
        sites: &[Site],
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        destinations: Arc<crate::forward::Registry>,
    ) -> Result<Ingest, StoreError> {
        let (conn, cache) = store.connect_writer()?;
        let max_window = sites
            .iter()
            .map(|s| s.settings.window_secs)
            .max()
            .unwrap_or(0);
        let index = writer::rebuild_index(&conn, clock.now_secs() - i64::from(max_window))?;
        let quotas = Arc::new(Quotas::load(&conn, sites, clock.now_micros())?);
        let (tx, rx) = bounded(MAX_QUEUED_JOBS);
        let queued = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (feed, _) = broadcast::channel(1_024);
        let forget = Arc::new(AtomicBool::new(false));
        let w = writer::Writer {
            conn,
            cache,
            index,
            clock,
            metrics,
            queued: queued.clone(),
            healthy: healthy.clone(),
            quotas: quotas.clone(),
            feed: feed.clone(),
            max_window,
            destinations,
            forget: forget.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Io {
                context: "starting the writer thread".into(),
                source: e,
            })?;
        Ok(Ingest {
            tx: Mutex::new(Some(tx)),
            queued,
            healthy,
            thread: Mutex::new(Some(thread)),
            feed,
            forget,
            quotas,
        })
    }

    /// Computes the keys of `events` of `site` and queues them for the
    /// writer; the receiver answers after the commit. Fails at once when the
    /// queue is full.
    fn submit(
        &self,
        site: Arc<Site>,
        events: Vec<Event>,
        mode: Mode,
    ) -> Result<Answer, IngestError> {
        let n = events.len();
        if self.queued.fetch_add(n, Ordering::SeqCst) + n > MAX_QUEUED_EVENTS && n > 0 {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(IngestError::QueueFull);
        }
        let copies = prepare(&site, events);
        let (job, rx) = Job::new(site, copies, mode, None);
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match guard.as_ref() {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => IngestError::QueueFull,
                TrySendError::Disconnected(_) => IngestError::Closed,
            }),
            None => Err(IngestError::Closed),
        };
        self.unless_sent(sent, n)?;
        Ok(rx)
    }

    /// Gives back the queue room of `n` events when a job was not sent.
    fn unless_sent(&self, sent: Result<(), IngestError>, n: usize) -> Result<(), IngestError> {
        if sent.is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
        }
        sent
    }

    /// Stores `events` of `site` (or, in test mode, decides them) and waits
    /// for the commit.
    pub async fn ingest(
        &self,
        site: Arc<Site>,
        events: Vec<Event>,
        mode: Mode,
    ) -> Result<Outcome, IngestError> {
        let rx = self.submit(site, events, mode)?;
        rx.await.unwrap_or(Err(IngestError::Closed))
    }

    /// Queues a backfill's chunk without waiting for the answer, and waits
    /// for room in the queue instead of refusing: a backfill yields to live
    /// traffic rather than failing (imports). `copies` come from
    /// [`prepare`]; `history` holds what the store had of their keys when
    /// the caller looked (keys committed since are in the writer's window).
    pub fn submit_patiently(
        &self,
        site: Arc<Site>,
        copies: Vec<Copy>,
        history: Arc<History>,
        mode: Mode,
    ) -> Result<Answer, IngestError> {
        let n = copies.len();
        while self.queued.fetch_add(n, Ordering::SeqCst) + n > MAX_QUEUED_EVENTS {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (job, rx) = Job::new(site, copies, mode, Some(history));
        // A blocking send: the caller is a CLI thread, never an HTTP worker.
        let sent = match tx {
            Some(tx) => tx.send(job).map_err(|_| IngestError::Closed),
            None => Err(IngestError::Closed),
        };
        self.unless_sent(sent, n)?;
        Ok(rx)
    }

    /// Lets the writer's key index go before it decides its next job, so
    /// that a long backfill's memory stays flat. Only for a local import (no
    /// server runs, so nothing else sends) and only once every job it sent
    /// is answered, so that the store holds all they wrote: each job after
    /// it must carry the [`History`] of all its keys, looked up after that.
    pub fn forget_keys(&self) {
        self.forget.store(true, Ordering::SeqCst);
    }

    /// Blocking variant for the CLI (imports and their dry runs).
    pub fn ingest_blocking(
        &self,
        site: Arc<Site>,
        events: Vec<Event>,
        mode: Mode,
    ) -> Result<Outcome, IngestError> {
        let rx = self.submit(site, events, mode)?;
        rx.blocking_recv().unwrap_or(Err(IngestError::Closed))
    }

    /// Whether the last commit succeeded and the writer runs.
    pub fn is_healthy(&self) -> bool {
        let running = self
            .thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|h| !h.is_finished()));
        self.healthy.load(Ordering::SeqCst) && running.unwrap_or(false)
    }

    /// A receiver of every unique event committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.feed.subscribe()
    }

    /// Stops taking work, lets the writer drain and commit what is queued,
    /// and waits for it.
    pub fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shutdown();
    }
}
