//! Forwarding (SPEC §6): each unique event a destination wants goes out once,
//! after dedup, from a transactional outbox.
//!
//! The writer records each group of new events in the outbox in the same
//! transaction as the events (see [`crate::store::outbox`]), so a committed
//! event is never lost to forwarding and a dropped copy is never forwarded.
//! [`run`] drains the outbox, each destination on its own task with one
//! page in flight (a slow receiver holds up no other): per destination it
//! expands recorded groups
//! into per-event rows when it has nothing due, reads due rows in pages,
//! sends them (a webhook POST per event, a Conversions API request per
//! 1,000), and marks them delivered.
//! A failure that may pass (network, timeout, 429, 5xx) backs the whole
//! destination off (exponential with jitter, honouring `Retry-After`), so a
//! receiver that is down costs one attempt per backoff, never a busy loop;
//! its events wait in the store, not in memory, and are parked past the
//! destination's age or attempt limit. An event the receiver refuses (any
//! other 4xx, a permanent Meta error) is parked at once, alone: the next one
//! goes without waiting. `tally forward retry` puts parked events back and
//! wakes the sender. A kill -9 between a send and its
//! mark repeats that delivery after the restart, with the same idempotency
//! key (the `event_id`), which webhook receivers and Meta dedup on.

pub mod payload;

use crate::app::App;
use crate::domain::forward::{backoff_secs, Destination, Target, META_GRAPH_VERSION};
use crate::store::outbox::{self, Counts, Due, Queue};
use payload::Verdict;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How often the sender looks for due rows when it has nothing to do.
const POLL: Duration = Duration::from_millis(250);
/// How often parked-by-age rows, outbox counts and old delivered rows are
/// brought up to date.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Delivered rows are kept this long (for `forward list` counts and SQL).
const KEEP_DELIVERED_MICROS: i64 = 7 * 86_400 * 1_000_000;
/// Recorded groups expanded into per-event rows at a time (a group holds
/// what one ingest commit brought: up to a few thousand events).
const EXPAND_GROUPS: usize = 16;
/// After the writer's wake-up, how long the sender waits for more commits
/// to come along, so a busy writer does not drive a pass per commit.
const GATHER: Duration = Duration::from_millis(50);
/// Rows a webhook destination reads at a time.
const WEBHOOK_PAGE: usize = 100;
/// A receiver that has not answered by then has failed this attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The destinations in memory: read by the writer on every group, changed
/// by `tally forward add|remove`; `tally forward retry` tells the sender
/// through it to try a destination again at once.
#[derive(Debug, Default)]
pub struct Registry {
    all: RwLock<Arc<Vec<Arc<Destination>>>>,
    requeued: Mutex<Vec<u32>>,
    wake: tokio::sync::Notify,
    last_group: AtomicI64,
}

impl Registry {
    /// A registry holding `destinations`.
    pub fn new(destinations: Vec<Destination>) -> Self {
        let registry = Self::default();
        registry.replace(destinations);
        registry
    }

    /// Every destination (a snapshot).
    pub fn all(&self) -> Arc<Vec<Arc<Destination>>> {
        self.all.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces every destination.
    pub fn replace(&self, destinations: Vec<Destination>) {
        *self.all.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(destinations.into_iter().map(Arc::new).collect());
    }

    /// Parked events of destination `id` are back in line: the sender
    /// forgets its backoff and tries it now.
    pub fn requeued(&self, id: u32) {
        self.requeued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        self.wake();
    }

    /// The writer is recording a group of new events that arrived at
    /// `received_at`: whether no earlier group shared that microsecond (a
    /// test's frozen clock), so that the group can be found by its time.
    pub fn group_arrived(&self, received_at: i64) -> bool {
        self.last_group.fetch_max(received_at, Ordering::SeqCst) < received_at
    }

    /// New outbox rows were committed: the sender looks at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn take_requeued(&self) -> Vec<u32> {
        std::mem::take(&mut *self.requeued.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Deliveries by result, per destination, and the outbox's counts.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<HashMap<u32, DestStats>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct DestStats {
    delivered: u64,
    retried: u64,
    parked: u64,
    outbox: Counts,
}

impl Stats {
    /// Brings the outbox gauges up to date (housekeeping does every few
    /// seconds; a park or a retry does at once, so they show it).
    pub fn refresh(&self, conn: &duckdb::Connection, now: i64) -> crate::store::Result<()> {
        let counts = outbox::counts(conn, now)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in inner.values_mut() {
            s.outbox = Counts::default();
        }
        for (id, c) in counts {
            inner.entry(id).or_default().outbox = c;
        }
        Ok(())
    }

    fn with(&self, id: u32, f: impl FnOnce(&mut DestStats)) {
        f(self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default());
    }

    /// The Prometheus lines for forwarding.
    pub fn render(&self, registry: &Registry) -> String {
        let stats = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        out += "# HELP tally_forward_deliveries_total Forwarding attempts by destination and result.\n";
        out += "# TYPE tally_forward_deliveries_total counter\n";
        let dests = registry.all();
        for d in dests.iter() {
            let s = stats.get(&d.id).copied().unwrap_or_default();
            for (result, n) in [
                ("delivered", s.delivered),
                ("retried", s.retried),
                ("parked", s.parked),
            ] {
                let _ = writeln!(
                    out,
                    "tally_forward_deliveries_total{{destination=\"{}\",kind=\"{}\",result=\"{result}\"}} {n}",
                    d.id,
                    d.target.kind()
                );
            }
        }
        out += "# HELP tally_outbox_events Outbox rows by destination and state.\n";
        out += "# TYPE tally_outbox_events gauge\n";
        for d in dests.iter() {
            let c = stats.get(&d.id).map(|s| s.outbox).unwrap_or_default();
            for (state, n) in [
                ("pending", c.pending),
                ("parked", c.parked),
                ("delivered", c.delivered),
            ] {
                let _ = writeln!(
                    out,
                    "tally_outbox_events{{destination=\"{}\",state=\"{state}\"}} {n}",
                    d.id
                );
            }
        }
        out += "# HELP tally_outbox_oldest_pending_seconds Age of the oldest undelivered event by destination.\n";
        out += "# TYPE tally_outbox_oldest_pending_seconds gauge\n";
        for d in dests.iter() {
            let c = stats.get(&d.id).map(|s| s.outbox).unwrap_or_default();
            let _ = writeln!(
                out,
                "tally_outbox_oldest_pending_seconds{{destination=\"{}\"}} {:.3}",
                d.id, c.oldest_pending_secs
            );
        }
        out
    }
}

/// One destination's place in line: when it may try again.
#[derive(Debug)]
struct Line {
    failures: u32,
    /// Backing off until then.
    not_before: Option<Instant>,
    /// Rows pending but not due: look again then.
    poll_at: Option<Instant>,
    /// Look at it on the next pass.
    ready: bool,
    /// A page of it is in flight.
    sending: bool,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            failures: 0,
            not_before: None,
            poll_at: None,
            ready: true,
            sending: false,
        }
    }
}

impl Line {
    /// Something may have changed (a commit, a timer): look again.
    fn wake(&mut self) {
        self.ready = true;
        self.poll_at = None;
    }

    /// Takes in what a page of destination `id` came to.
    fn settle(&mut self, id: u32, result: crate::store::Result<PageResult>) {
        match result {
            Ok(PageResult::Idle) => {}
            Ok(PageResult::Waiting) => self.poll_at = Some(Instant::now() + POLL),
            Ok(PageResult::Sent) => {
                self.failures = 0;
                self.not_before = None;
                self.ready = true;
            }
            Ok(PageResult::Failed { retry_after }) => {
                self.failures += 1;
                let wait = retry_after
                    .unwrap_or_else(|| backoff_secs(self.failures - 1, rand::random::<f64>()));
                self.not_before = Some(Instant::now() + Duration::from_secs(wait));
                self.ready = true;
            }
            Err(e) => {
                tracing::warn!(destination = id, error = %e, "forwarding could not read the outbox");
                self.not_before = Some(Instant::now() + Duration::from_secs(5));
                self.ready = true;
            }
        }
    }
}

/// Drains the outbox until the task is dropped.
pub async fn run(app: Arc<App>) {
    match Sender::new(app) {
        Ok(sender) => Arc::new(sender).run().await,
        Err(e) => tracing::error!(error = %e, "forwarding cannot start; nothing is forwarded"),
    }
}

/// The sender: its HTTP client; it takes a connection to the store for
/// each query, so an idle store can let its cache go (`store::CacheRelease`).
struct Sender {
    app: Arc<App>,
    client: reqwest::Client,
}

/// What a page of a destination's outbox came to.
enum PageResult {
    /// Nothing pending.
    Idle,
    /// Pending, not due yet.
    Waiting,
    /// Sent (delivered, or refused and parked).
    Sent,
    /// Failed in a way that may pass: back off.
    Failed { retry_after: Option<u64> },
}

impl Sender {
    fn new(app: Arc<App>) -> anyhow::Result<Sender> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { app, client })
    }

    /// Runs `f` on a connection of its own, off the async threads.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&duckdb::Connection) -> crate::store::Result<T> + Send + 'static,
    ) -> crate::store::Result<T> {
        let app = self.app.clone();
        tokio::task::spawn_blocking(move || f(&*app.store.connect()?))
            .await
            .map_err(|e| {
                crate::store::StoreError::Invalid(format!("forwarding's store task: {e}"))
            })?
    }

    /// Sends for every destination independently: each has at most one
    /// page in flight, on its own task, so a receiver that is slow or
    /// timing out delays only its own events and its own backoff.
    async fn run(self: Arc<Self>) {
        let mut lines: HashMap<u32, Line> = HashMap::new();
        let mut in_flight: JoinSet<(u32, crate::store::Result<PageResult>)> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, u32> = HashMap::new();
        let mut housekeeping = Instant::now();
        loop {
            if Instant::now() >= housekeeping {
                housekeeping = Instant::now() + HOUSEKEEPING;
                let app = self.app.clone();
                if let Err(e) = self.db(move |conn| keep_house(&app, conn)).await {
                    tracing::warn!(error = %e, "forwarding housekeeping failed");
                }
            }
            for id in self.app.destinations.take_requeued() {
                let line = lines.entry(id).or_default();
                *line = Line {
                    sending: line.sending,
                    ..Line::default()
                };
            }
            // When to look again: at housekeeping, or sooner for rows due
            // later and for backoffs that end.
            let mut next = housekeeping;
            for d in self.app.destinations.all().iter() {
                let line = lines.entry(d.id).or_default();
                if line.sending {
                    continue;
                }
                if let Some(t) = line.not_before.filter(|t| Instant::now() < *t) {
                    next = next.min(t);
                    continue;
                }
                if !line.ready {
                    continue;
                }
                line.ready = false;
                line.sending = true;
                let (sender, dest, id) = (self.clone(), d.clone(), d.id);
                let task = in_flight.spawn(async move { (id, sender.send_page(&dest).await) });
                tasks.insert(task.id(), id);
            }
            for line in lines.values() {
                if let Some(t) = line.poll_at {
                    next = next.min(t);
                }
            }
            // Idle destinations cost nothing: new rows come from the
            // writer, which wakes the sender after each commit with some.
            tokio::select! {
                Some(done) = in_flight.join_next_with_id() => {
                    let (id, result) = match done {
                        Ok((task, (id, result))) => {
                            tasks.remove(&task);
                            (id, result)
                        }
                        Err(e) => {
                            let id = tasks.remove(&e.id()).unwrap_or_default();
                            let err = crate::store::StoreError::Invalid(format!("forwarding's send task: {e}"));
                            (id, Err(err))
                        }
                    };
                    let line = lines.entry(id).or_default();
                    line.sending = false;
                    line.settle(id, result);
                }
                _ = tokio::time::sleep_until(next.into()) => lines.values_mut().for_each(Line::wake),
                _ = self.app.destinations.wake.notified() => {
                    tokio::time::sleep(GATHER).await;
                    lines.values_mut().for_each(Line::wake);
                }
            }
        }
    }

    /// Sends one page of `d`'s due rows and records the result.
    async fn send_page(&self, d: &Arc<Destination>) -> crate::store::Result<PageResult> {
        let page = match &d.target {
            Target::Webhook { .. } => WEBHOOK_PAGE,
            Target::Meta { .. } => d.target.batch_size(),
        };
        let now = self.app.clock.now_micros();
        let dest = d.clone();
        let due = match self
            .db(move |conn| {
                let queue = outbox::due(conn, dest.id, &dest.site, now, page)?;
                // Nothing due: turn the next groups the writer recorded into
                // per-event rows (a destination that is down never gets
                // here, so its backlog stays one row per group).
                let expanded = match queue {
                    Queue::Due(_) => 0,
                    _ => outbox::expand(conn, &dest, EXPAND_GROUPS, None, "pending", None)?.0,
                };
                Ok((queue, expanded))
            })
            .await?
        {
            (_, expanded) if expanded > 0 => return Ok(PageResult::Sent),
            (Queue::Idle, _) => return Ok(PageResult::Idle),
            (Queue::Waiting, _) => return Ok(PageResult::Waiting),
            (Queue::Due(rows), _) => rows,
        };
        // An event deleted since (by hand or retention) has nothing to send.
        let (gone, due): (Vec<Due>, Vec<Due>) = due.into_iter().partition(|r| r.event.is_none());
        self.record(
            d,
            gone.iter().map(|r| r.rowid).collect(),
            Verdict::Reject {
                error: "the event is no longer in the store".into(),
                per_event: false,
            },
        )
        .await?;
        match &d.target {
            Target::Webhook { url, secret } => {
                for row in due {
                    let event = row.event.as_ref().expect("partitioned above");
                    let sent_at = self.app.clock.now_secs();
                    let body = payload::webhook_body(event, d, sent_at);
                    let verdict = post(
                        self.client
                            .post(url)
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .header(payload::SIGNATURE_HEADER, payload::signature(secret, &body))
                            .header(payload::TIMESTAMP_HEADER, sent_at.to_string())
                            .header(payload::IDEMPOTENCY_HEADER, &event.event_id)
                            .body(body),
                        false,
                    )
                    .await;
                    // A refused event is parked alone; only a failure that
                    // may pass later (network, 429, 5xx) holds the
                    // destination back.
                    let retry = retry_of(&verdict);
                    self.record(d, vec![row.rowid], verdict).await?;
                    if let Some(retry_after) = retry {
                        return Ok(PageResult::Failed { retry_after });
                    }
                }
            }
            Target::Meta {
                pixel_id,
                token,
                graph_url,
                test_event_code,
            } => {
                let url = format!(
                    "{}/{META_GRAPH_VERSION}/{pixel_id}/events",
                    graph_url.trim_end_matches('/')
                );
                // Meta refuses a whole request for one bad event: a refusal
                // that may be per event sends each half apart, down to
                // single events, so only the bad ones are parked.
                let mut batches = vec![due.as_slice()];
                while let Some(batch) = batches.pop() {
                    let events: Vec<_> = batch.iter().filter_map(|r| r.event.as_ref()).collect();
                    let body = payload::meta_body(&events, d, token, test_event_code.as_deref());
                    let verdict = post(self.client.post(&url).json(&body), true).await;
                    if let Verdict::Reject {
                        per_event: true, ..
                    } = verdict
                    {
                        if batch.len() > 1 {
                            let (a, b) = batch.split_at(batch.len() / 2);
                            batches.extend([b, a]);
                            continue;
                        }
                    }
                    let retry = retry_of(&verdict);
                    self.record(d, batch.iter().map(|r| r.rowid).collect(), verdict)
                        .await?;
                    if let Some(retry_after) = retry {
                        return Ok(PageResult::Failed { retry_after });
                    }
                }
            }
        }
        Ok(PageResult::Sent)
    }

    /// Marks rows after an attempt, and counts it: delivered, failed to be
    /// retried, or parked (refused, or failed a last time).
    async fn record(
        &self,
        d: &Arc<Destination>,
        rowids: Vec<i64>,
        verdict: Verdict,
    ) -> crate::store::Result<()> {
        if rowids.is_empty() {
            return Ok(());
        }
        let app = &self.app;
        let n = rowids.len() as u64;
        let now = app.clock.now_micros();
        let (id, max_attempts) = (d.id, d.max_attempts);
        let (stats, v) = (app.clone(), verdict.clone());
        let parked = self
            .db(move |conn| {
                let (error, park) = match &v {
                    Verdict::Delivered => return outbox::delivered(conn, &rowids, now).map(|()| 0),
                    Verdict::Retry { error, .. } => (error, false),
                    Verdict::Reject { error, .. } => (error, true),
                };
                let parked = outbox::failed(conn, &rowids, error, max_attempts, park)?;
                if parked > 0 {
                    stats.forward_stats.refresh(conn, now)?;
                }
                Ok(parked)
            })
            .await?;
        match verdict {
            Verdict::Delivered => app.forward_stats.with(id, |s| s.delivered += n),
            Verdict::Retry { error, .. } if parked == 0 => {
                tracing::debug!(destination = id, %error, "delivery failed; will retry");
                app.forward_stats.with(id, |s| s.retried += n)
            }
            Verdict::Retry { error, .. } | Verdict::Reject { error, .. } => {
                tracing::warn!(destination = id, %error, events = parked, "delivery failed; events parked (`tally forward retry` sends them again)");
                app.forward_stats.with(id, |s| {
                    s.parked += parked;
                    s.retried += n - parked;
                })
            }
        }
        Ok(())
    }
}

/// Parks rows past their destination's age, refreshes the counts, forgets
/// rows delivered a week ago.
fn keep_house(app: &App, conn: &duckdb::Connection) -> crate::store::Result<()> {
    let now = app.clock.now_micros();
    for d in app.destinations.all().iter() {
        let cutoff = now - i64::from(d.max_age_secs) * 1_000_000;
        let mut parked = outbox::park_older(conn, d.id, cutoff)?;
        let error = Some("undelivered past the age limit");
        loop {
            let (groups, events) =
                outbox::expand(conn, d, EXPAND_GROUPS, Some(cutoff), "parked", error)?;
            parked += events;
            if groups == 0 {
                break;
            }
        }
        if parked > 0 {
            tracing::warn!(
                destination = d.id,
                parked,
                "events parked past the age limit"
            );
            app.forward_stats.with(d.id, |s| s.parked += parked);
        }
    }
    outbox::forget_delivered(conn, now - KEEP_DELIVERED_MICROS)?;
    app.forward_stats.refresh(conn, now)
}

/// For an attempt to repeat later: the wait the receiver asked for, if any.
fn retry_of(v: &Verdict) -> Option<Option<u64>> {
    match v {
        Verdict::Retry { retry_after, .. } => Some(*retry_after),
        _ => None,
    }
}

/// A `Retry-After` header: delay seconds or an HTTP date; at least 1 s
/// (a `0` must not turn the sender into a busy loop), at most an hour.
fn retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    let secs = match value.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64
        }
    };
    Some(secs.clamp(1, 3_600))
}

/// Sends a request and reads the answer as its destination does.
async fn post(request: reqwest::RequestBuilder, meta: bool) -> Verdict {
    match request.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let body = res.text().await.unwrap_or_default();
            payload::judge(status, retry_after, &body, meta)
        }
        Err(e) => Verdict::Retry {
            error: format!("cannot reach the receiver: {e}"),
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::retry_after;

    #[test]
    fn retry_after_reads_seconds_or_a_date_within_one_second_and_an_hour() {
        assert_eq!(retry_after(" 7 "), Some(7));
        assert_eq!(retry_after("0"), Some(1), "never a busy loop");
        assert_eq!(retry_after("86400"), Some(3_600));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        assert!(matches!(retry_after(&soon), Some(29..=30)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(1));
        assert_eq!(retry_after("soon"), None);
    }
}
