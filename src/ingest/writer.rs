//! The writer thread: group commit with in-memory dedup.
//!
//! One thread owns the write connection and the [`KeyIndex`], so decisions
//! are made in arrival order without locks. It is the loop and the
//! transaction around [`crate::dedup::Group`], which makes every decision:
//! decide each copy, read the stored rows the group must change, resolve
//! them, append and update in one transaction, commit, and only then fold
//! the group into the index and answer. If the commit fails, the index is
//! as if the group never came, and every request in it gets a 503 to retry
//! whole. Test-mode jobs run the same steps on a scratch group after the
//! live ones and never write.

use super::{FeedItem, History, IngestError, Job, Mode, Outcome, Quotas, Reply};
use crate::dedup::{coalesce, Entry, Group, KeyIndex, Touch};
use crate::domain::row::RowUpdate;
use crate::domain::{Clock, KeyHash, Site, Source};
use crate::metrics::{Fate, Metrics};
use crate::store::events::{self, WindowRow};
use crate::store::outbox;
use crate::store::sql::format_timestamp;
use crate::store::{transaction, CacheRelease, Released, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use duckdb::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;

/// Most events folded into one commit; larger groups amortise the commit
/// (measured: 2,000 rows a commit runs ~6x faster a row than 100).
const GROUP_EVENTS: usize = 8_192;

/// After this long without requests, the writer checkpoints what it wrote,
/// so an idle appliance keeps a short WAL (a large WAL is fine under load:
/// see `checkpoint_threshold` in `store`); then, and every this long while
/// idle, it lets DuckDB's block cache go if it grew by 8 MB since the last
/// time and no other connection is open ([`CacheRelease`]).
const IDLE_CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the writer waits for more requests to join a group once it has
/// one. A commit costs milliseconds whatever its size, so a short wait for
/// company buys throughput for a little latency.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Rebuilds the index from the keys of events that arrived since `since_secs`.
pub fn rebuild_index(conn: &Connection, since_secs: i64) -> Result<KeyIndex> {
    let started = Instant::now();
    let mut index = KeyIndex::default();
    events::scan_window(conn, since_secs, |r: WindowRow| {
        let entry = entry(&r);
        index.insert_latest(r.key, entry);
        if let Some(skey) = r.skey {
            index.insert_latest(skey, entry);
        }
    })?;
    let bytes_per_key = index.memory_bytes() as f64 / index.len().max(1) as f64;
    tracing::info!(
        keys = index.len(),
        ms = started.elapsed().as_millis() as u64,
        index_mb = index.memory_bytes() / (1 << 20),
        bytes_per_key = format!("{bytes_per_key:.1}"),
        "dedup index rebuilt"
    );
    Ok(index)
}

/// The index entry of a stored row.
pub(super) fn entry(r: &WindowRow) -> Entry {
    Entry::new(r.start, r.kept, r.seen, r.merges, r.fingerprint)
}

pub(super) struct Writer {
    pub conn: Connection,
    /// Lets DuckDB's block cache go once the writer has checkpointed idle.
    pub cache: CacheRelease,
    pub index: KeyIndex,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub queued: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    pub quotas: Arc<Quotas>,
    pub feed: broadcast::Sender<Arc<FeedItem>>,
    /// Longest window of any site seen; keys older than it are swept.
    pub max_window: u32,
    /// Forwarding destinations: the outbox records the new events each wants.
    pub destinations: Arc<crate::forward::Registry>,
    /// Set when a local import wants the index emptied ([`super::Ingest::forget_keys`]).
    pub forget: Arc<AtomicBool>,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Job>) {
        let mut dirty = false;
        loop {
            let first = match rx.recv_timeout(IDLE_CHECKPOINT) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if std::mem::take(&mut dirty) {
                        self.checkpoint();
                    }
                    self.release_cache();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            dirty = true;
            let mut jobs = vec![first];
            let mut n = jobs[0].copies.len();
            let linger_until = Instant::now() + LINGER;
            while n < GROUP_EVENTS {
                match rx.recv_deadline(linger_until) {
                    Ok(job) => {
                        n += job.copies.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            if self.forget.swap(false, Ordering::SeqCst) {
                self.index = KeyIndex::default();
            }
            let waited = jobs[0].queued_at.elapsed().as_micros() as u64;
            for job in &jobs {
                self.max_window = self.max_window.max(job.site.settings.window_secs);
            }
            let (tests, live): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| matches!(j.mode, Mode::Test { .. }));
            if !live.is_empty() {
                self.commit_group(live);
            }
            for job in tests {
                self.answer_test(job);
            }
            self.queued.fetch_sub(n, Ordering::SeqCst);
            self.metrics
                .set_queue(self.queued.load(Ordering::SeqCst) as u64, waited);
            let cutoff = self.clock.now_secs() - i64::from(self.max_window);
            self.index.sweep_one_shard(cutoff.max(0) as u32);
        }
        tracing::info!("writer drained its queue and stopped");
    }

    fn checkpoint(&self) {
        let started = Instant::now();
        match self.conn.execute_batch("CHECKPOINT") {
            Ok(()) => tracing::debug!(ms = started.elapsed().as_millis() as u64, "idle checkpoint"),
            Err(e) => tracing::warn!(error = %e, "idle checkpoint failed"),
        }
    }

    /// Lets DuckDB's block cache go if it grew and no other connection is
    /// open; a failure is logged.
    fn release_cache(&mut self) {
        let started = Instant::now();
        match self.cache.release(&self.conn) {
            Ok(Released::Done) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::debug!(ms, "idle: DuckDB's block cache let go");
            }
            Ok(Released::Unneeded | Released::Busy) => {}
            Err(e) => tracing::warn!(error = %e, "letting DuckDB's block cache go failed"),
        }
    }

    /// Decides, writes and commits live jobs; answers each after the commit.
    fn commit_group(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let now_micros = self.clock.now_micros();
        let mut replies = Vec::with_capacity(jobs.len());
        let result = transaction(&self.conn, |conn| {
            let mut group = Group::new(now_micros);
            for job in jobs {
                let (reply, copies) = job.split();
                let range = decide_job(conn, &self.index, &mut group, copies)?;
                replies.push((reply, range));
            }
            let entries =
                resolve_touches(conn, &mut group, now_micros, |u| events::update(conn, u))?;
            // Before the events' appenders: measured, a statement right
            // before COMMIT can leave DuckDB's worker threads awake to take
            // the commit task while this thread spins waiting for it.
            let forwarded = self.record_outbox(conn, &group)?;
            events::append(conn, &group.rows, &group.dropped)?;
            Ok::<_, crate::store::StoreError>((group, entries, forwarded))
        });
        match result {
            Ok((group, entries, forwarded)) => {
                self.healthy.store(true, Ordering::SeqCst);
                if forwarded {
                    self.destinations.wake();
                }
                let rows = (group.rows.len() + group.dropped.len()) as u64;
                self.metrics
                    .commit(started.elapsed().as_micros() as u64, rows);
                let answers: Vec<_> = replies
                    .into_iter()
                    .map(|(reply, range)| (reply, group.counts(range)))
                    .collect();
                // The index, quotas and counters first: whoever reads them
                // after the answer sees this group.
                self.apply(group, entries, now_micros);
                for (reply, (accepted, deduplicated)) in answers {
                    let _ = reply.send(Ok(Outcome {
                        accepted,
                        deduplicated,
                        decisions: None,
                    }));
                }
            }
            Err(e) => {
                self.healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "group commit failed; answering 503");
                for (reply, _) in replies {
                    let _ = reply.send(Err(IngestError::Store(e.to_string())));
                }
            }
        }
    }

    /// Records a group's new events in the outbox for the destinations
    /// that want them: per destination, one row with the group's arrival
    /// time (which all its new events share) and how many it wants; the
    /// sender expands it. A group that shares its microsecond with an
    /// earlier one gets a row per event instead. Whether anything was
    /// recorded.
    fn record_outbox(&self, conn: &Connection, group: &Group) -> Result<bool> {
        let Some(first) = group.rows.first() else {
            return Ok(false);
        };
        let fresh = self.destinations.group_arrived(first.received_at)
            && group
                .rows
                .iter()
                .all(|r| r.received_at == first.received_at);
        let dests = self.destinations.all();
        if dests.is_empty() {
            return Ok(false);
        }
        let mut marks: HashMap<u32, u32> = HashMap::new();
        let mut rows = Vec::new();
        for row in &group.rows {
            for d in dests.iter() {
                if d.site == row.site.name && d.wants(&row.event.event_name) {
                    *marks.entry(d.id).or_default() += 1;
                    let due = row.received_at + i64::from(d.settle_secs) * 1_000_000;
                    if !fresh {
                        rows.push((d.id, row.key, row.received_at, due));
                    }
                }
            }
        }
        let any = !marks.is_empty();
        if fresh {
            let marks: Vec<outbox::Mark> = marks
                .into_iter()
                .map(|(dest_id, events)| outbox::Mark {
                    dest_id,
                    received_at: first.received_at,
                    events,
                })
                .collect();
            outbox::mark(conn, &marks)?;
        } else {
            outbox::append(conn, &rows)?;
        }
        Ok(any)
    }

    /// Test mode: the same decisions on a scratch group, reading what they
    /// need, writing nothing and leaving the index as it is.
    fn answer_test(&self, job: Job) {
        let now_micros = self.clock.now_micros();
        let (reply, copies) = job.split();
        // What each copy's match keys become once stored (SPEC §5).
        let user_data: Vec<Option<serde_json::Value>> = copies
            .copies
            .iter()
            .map(|c| {
                let text = c.event.user_data.as_deref()?;
                serde_json::from_str(text).ok()
            })
            .collect();
        let answer = (|| {
            let mut group = Group::new(now_micros);
            let range = decide_job(&self.conn, &self.index, &mut group, copies)?;
            resolve_touches(&self.conn, &mut group, now_micros, |_| Ok(()))?;
            let (accepted, deduplicated) = group.counts(range.clone());
            let mut decisions = group.decisions[range].to_vec();
            for (d, u) in decisions.iter_mut().zip(user_data) {
                d.user_data = u;
            }
            Ok::<_, crate::store::StoreError>(Outcome {
                accepted,
                deduplicated,
                decisions: Some(decisions),
            })
        })();
        let _ = reply.send(answer.map_err(|e| IngestError::Store(e.to_string())));
    }

    /// Folds a committed group into the index, metrics, quotas and the live feed.
    fn apply(&mut self, group: Group, entries: Vec<(KeyHash, Entry)>, now_micros: i64) {
        let now = now_micros.div_euclid(1_000_000) as u32;
        let mut counts = [[0u64; 2]; 3];
        for d in &group.decisions {
            let fate = usize::from(d.outcome == crate::dedup::Outcome::Duplicate);
            counts[usize::from(d.source.index())][fate] += 1;
        }
        for source in Source::ALL {
            let [accepted, deduplicated] = counts[usize::from(source.index())];
            self.metrics.count(source, Fate::Accepted, accepted);
            self.metrics.count(source, Fate::Deduplicated, deduplicated);
        }
        let live = self.feed.receiver_count() > 0;
        let mut per_site: HashMap<&str, u64> = HashMap::new();
        for row in &group.rows {
            let entry = Entry::new(now, row.event.source, row.seen, row.merges, row.fingerprint);
            self.index.insert(row.key, entry);
            if let Some(skey) = row.skey {
                self.index.insert(skey, entry);
            }
            *per_site.entry(&row.site.name).or_default() += 1;
            if live {
                let _ = self.feed.send(Arc::new(FeedItem {
                    site: row.site.name.clone(),
                    event_name: row.event.event_name.clone(),
                    event_id: row.event.event_id.clone(),
                    source: row.event.source.as_str(),
                    occurred_at: format_timestamp(row.occurred_at),
                    url: row.event.url.clone(),
                }));
            }
        }
        for (key, entry) in entries {
            self.index.refresh(key, entry);
        }
        for (site, n) in per_site {
            self.quotas.add(site, n, now_micros);
        }
    }
}

/// Decides one job's copies into `group`; returns the range of their
/// decisions. A backfill's keys that no live window holds are checked
/// against the store's history: the one its caller looked up, or else one
/// query here for the keys no live window holds.
fn decide_job(
    conn: &Connection,
    index: &KeyIndex,
    group: &mut Group,
    job: JobCopies,
) -> Result<std::ops::Range<usize>> {
    let start = group.decisions.len();
    let history = match job.history {
        Some(h) => h,
        None if job.mode.checks_history() => {
            let fresh: super::Keys = job
                .copies
                .iter()
                .filter(|c| group.needs_history(index, &job.site, c))
                .collect();
            Arc::new(super::look_up_history(conn, &job.site.name, &fresh)?)
        }
        None => Arc::default(),
    };
    for copy in job.copies {
        group.decide(index, &job.site, copy, &history);
    }
    Ok(start..group.decisions.len())
}

/// What [`decide_job`] takes of a [`Job`] (its reply stays with the caller).
struct JobCopies {
    site: Arc<Site>,
    copies: Vec<crate::dedup::Copy>,
    mode: Mode,
    history: Option<Arc<History>>,
}

impl Job {
    /// The reply, and what is decided.
    fn split(self) -> (Reply, JobCopies) {
        let Job {
            site,
            copies,
            mode,
            history,
            reply,
            ..
        } = self;
        (
            reply,
            JobCopies {
                site,
                copies,
                mode,
                history,
            },
        )
    }
}

/// Reads the stored rows the group's touches need, works out their changes
/// and hands each to `write`; the dropped copies join the group's. Returns
/// the index entries to refresh after the commit.
///
/// Touches that need no read change no content, only the sources seen, so
/// they go first and the rows read next include what they wrote. A row
/// reached by both its keys is read by two touches: [`coalesce`] makes them
/// one, so every row read has one touch and is written once.
fn resolve_touches(
    conn: &Connection,
    group: &mut Group,
    now_micros: i64,
    mut write: impl FnMut(&RowUpdate) -> Result<()>,
) -> Result<Vec<(KeyHash, Entry)>> {
    group.finish_rows();
    let now = now_micros.div_euclid(1_000_000) as u32;
    let (read, unread): (Vec<Touch>, Vec<Touch>) = group
        .take_touches()
        .into_iter()
        .partition(|t| t.needs_read(now));
    let mut entries = Vec::new();
    let mut apply = |group: &mut Group, t: Touch, stored| -> Result<()> {
        let (mut resolved, decisions) = t.resolve(stored, now_micros, &group.decisions);
        if let Some(u) = &resolved.update {
            write(u)?;
        }
        group.absorb(&mut resolved, decisions);
        entries.append(&mut resolved.entries);
        Ok(())
    };
    for t in unread {
        apply(group, t, None)?;
    }
    let mut stored = Vec::with_capacity(read.len());
    for t in read {
        let row = events::load_kept(conn, t.addr, t.entry.first_seen)?;
        stored.push((t, row));
    }
    for (t, row) in coalesce(stored) {
        apply(group, t, row)?;
    }
    Ok(entries)
}
