//! The writer thread: group commit with in-memory dedup.
//!
//! One thread owns the write connection and the [`KeyIndex`], so decisions
//! are made in arrival order without locks. A group's decisions are staged
//! beside the index and folded into it only after DuckDB commits: if the
//! commit fails, the index is as if the group never came, and every request
//! in it gets a 503 to retry whole.

use super::{FeedItem, IngestError, Job, Outcome, Quotas};
use crate::dedup::merge::{fill_missing, props_hash};
use crate::dedup::{judge, Entry, KeyIndex, Resolution, Verdict};
use crate::domain::{Clock, Event, KeyHash, Site, Source};
use crate::metrics::{Fate, Metrics};
use crate::store::events::{self, DuplicateRow, EventRow};
use crate::store::sql::format_timestamp;
use crate::store::Result;
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
/// see `checkpoint_threshold` in `store`).
const IDLE_CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the writer waits for more requests to join a group once it has
/// one. A commit costs milliseconds whatever its size, so a short wait for
/// company buys throughput for a little latency.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Rebuilds the index from the keys of events that arrived since `since_secs`.
pub fn rebuild_index(conn: &Connection, since_secs: i64) -> Result<KeyIndex> {
    let started = Instant::now();
    let mut index = KeyIndex::default();
    events::scan_window(conn, since_secs, |key, start, kept, seen| {
        index.insert_latest(key, Entry::without_props(start, kept, seen))
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

pub(super) struct Writer {
    pub conn: Connection,
    pub index: KeyIndex,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub queued: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    pub quotas: Arc<Quotas>,
    pub feed: broadcast::Sender<Arc<FeedItem>>,
    /// Longest window of any site seen; keys older than it are swept.
    pub max_window: u32,
}

/// One request's events as the writer consumes them: site, events, and
/// whether to look up keys in the whole store (imports).
type Work = (Arc<Site>, Vec<Event>, bool);

/// A kept row already in the store that this group changes.
struct Touch {
    /// The index entry before this group; `entry.first_seen` is the window start.
    entry: Entry,
    /// Sources seen, including this group's copies.
    seen: u8,
    /// A copy that replaces the kept one (`prefer_pixel`).
    replacement: Option<EventRow>,
    /// Properties texts to fold in, in arrival order.
    merges: Vec<String>,
    /// Hash of the last properties text folded in.
    last_props: u32,
    /// Whether `last_props` is known (else the kept row must be read to merge).
    props_known: bool,
    /// Whether the site fills in missing properties.
    merge: bool,
}

/// One group's staged decisions.
#[derive(Default)]
struct Group {
    rows: Vec<EventRow>,
    row_of: HashMap<KeyHash, usize>,
    /// Hash of the last properties text folded into each new row.
    row_props: Vec<u32>,
    dups: Vec<DuplicateRow>,
    touched: HashMap<KeyHash, Touch>,
    /// Copies accepted and deduplicated, by [`Source::index`] of the arriving
    /// copy; counted in the metrics once the group commits.
    accepted: [u64; 3],
    deduplicated: [u64; 3],
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
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            dirty = true;
            let mut jobs = vec![first];
            let mut n = jobs[0].events.len();
            let linger_until = Instant::now() + LINGER;
            while n < GROUP_EVENTS {
                match rx.recv_deadline(linger_until) {
                    Ok(job) => {
                        n += job.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            for job in &jobs {
                self.max_window = self.max_window.max(job.site.settings.window_secs);
            }
            self.commit_group(jobs, n);
            let cutoff = self.clock.now_secs() - i64::from(self.max_window);
            self.index.sweep_one_shard(cutoff.max(0) as u32);
        }
        tracing::info!("writer drained its queue and stopped");
    }

    fn commit_group(&mut self, jobs: Vec<Job>, n: usize) {
        let started = Instant::now();
        let now_micros = self.clock.now_micros();
        // Events move into rows; only the reply channels stay behind.
        let (replies, work): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| (j.reply, (j.site, j.events, j.check_history)))
            .unzip();
        let result = self
            .decide(work, now_micros)
            .and_then(|(group, outcomes)| self.write(&group).map(|()| (group, outcomes)));
        self.queued.fetch_sub(n, Ordering::SeqCst);
        self.metrics
            .set_queue_depth(self.queued.load(Ordering::SeqCst) as u64);
        match result {
            Ok((group, outcomes)) => {
                self.healthy.store(true, Ordering::SeqCst);
                let rows = (group.rows.len() + group.dups.len()) as u64;
                self.metrics
                    .commit(started.elapsed().as_micros() as u64, rows);
                self.apply(group, now_micros);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                self.healthy.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, events = n, "group commit failed; answering 503");
                let _ = self.conn.execute_batch("ROLLBACK");
                for reply in replies {
                    let _ = reply.send(Err(IngestError::Store(e.to_string())));
                }
            }
        }
    }

    fn checkpoint(&self) {
        let started = Instant::now();
        match self.conn.execute_batch("CHECKPOINT") {
            Ok(()) => tracing::debug!(ms = started.elapsed().as_millis() as u64, "idle checkpoint"),
            Err(e) => tracing::warn!(error = %e, "idle checkpoint failed"),
        }
    }

    /// Decides every copy of the group against the index and the group itself.
    fn decide(&self, work: Vec<Work>, now_micros: i64) -> Result<(Group, Vec<Outcome>)> {
        let now = now_micros.div_euclid(1_000_000) as u32;
        let mut group = Group::default();
        let mut outcomes = Vec::with_capacity(work.len());
        for (site, events, check_history) in work {
            let site = &site;
            let keys: Vec<KeyHash> = events
                .iter()
                .map(|e| KeyHash::of(site.id, &e.event_name, &e.event_id))
                .collect();
            let history = if check_history {
                let fresh: Vec<KeyHash> = keys
                    .iter()
                    .filter(|k| {
                        !group.row_of.contains_key(k)
                            && self.live_entry(&group, k, site, now).is_none()
                    })
                    .copied()
                    .collect();
                events::existing_keys(&self.conn, &site.name, &fresh)?
            } else {
                Default::default()
            };
            let mut outcome = Outcome::default();
            for (event, key) in events.into_iter().zip(keys) {
                let source = event.source;
                let fate = if let Some(&i) = group.row_of.get(&key) {
                    group.fold_into_new_row(i, site, event, now_micros);
                    Fate::Deduplicated
                } else if let Some(entry) = self.live_entry(&group, &key, site, now) {
                    group.fold_into_stored(key, entry, site, event, now_micros);
                    Fate::Deduplicated
                } else if let Some(&kept) = history.get(&key) {
                    group.dups.push(dropped(site, event, now_micros, kept));
                    Fate::Deduplicated
                } else {
                    group.push_new(key, site, event, now_micros);
                    Fate::Accepted
                };
                let i = usize::from(source.index());
                match fate {
                    Fate::Accepted => {
                        outcome.accepted += 1;
                        group.accepted[i] += 1;
                    }
                    _ => {
                        outcome.deduplicated += 1;
                        group.deduplicated[i] += 1;
                    }
                }
            }
            outcomes.push(outcome);
        }
        Ok((group, outcomes))
    }

    /// The index entry of `key` if its window is still open, seen through
    /// this group's staged changes.
    fn live_entry(&self, group: &Group, key: &KeyHash, site: &Site, now: u32) -> Option<Entry> {
        let existing = group
            .touched
            .get(key)
            .map(|t| t.entry)
            .or_else(|| self.index.get(key));
        match judge(existing, now, site.settings.window_secs) {
            Verdict::Duplicate(e) => Some(e),
            Verdict::New => None,
        }
    }

    /// Appends, updates and commits the group in one transaction.
    fn write(&self, group: &Group) -> Result<()> {
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        events::append(&self.conn, &group.rows, &group.dups)?;
        for (key, touch) in &group.touched {
            self.update_stored(*key, touch)?;
        }
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Brings a stored kept row up to date with this group's copies. The
    /// row is read only when the index cannot tell what to write.
    fn update_stored(&self, key: KeyHash, t: &Touch) -> Result<()> {
        let must_read = !t.merges.is_empty() || t.replacement.is_some();
        if !must_read {
            if t.seen != t.entry.sources() {
                events::update_seen(&self.conn, key, t.entry.first_seen, t.seen)?;
            }
            return Ok(());
        }
        let Some(stored) = events::load_kept(&self.conn, key, t.entry.first_seen)? else {
            return Ok(()); // the row was deleted by hand: nothing to merge into
        };
        let seen = stored.seen | t.seen;
        if let Some(replacement) = &t.replacement {
            let mut row = replacement.clone();
            row.seen = seen;
            let old = if t.merge {
                stored.properties.as_deref()
            } else {
                None
            };
            row.properties = fold(
                row.properties,
                old.into_iter().chain(t.merges.iter().map(String::as_str)),
            );
            return events::replace_kept(&self.conn, t.entry.first_seen, &row);
        }
        let props = fold(
            stored.properties.clone(),
            t.merges.iter().map(String::as_str),
        );
        if props != stored.properties || seen != stored.seen {
            events::update_kept(&self.conn, key, t.entry.first_seen, seen, props.as_deref())?;
        }
        Ok(())
    }

    /// Folds a committed group into the index, quotas and the live feed.
    fn apply(&mut self, group: Group, now_micros: i64) {
        let now = now_micros.div_euclid(1_000_000) as u32;
        let mut per_site: HashMap<&str, u64> = HashMap::new();
        for source in Source::ALL {
            let i = usize::from(source.index());
            self.metrics
                .count(source, Fate::Accepted, group.accepted[i]);
            self.metrics
                .count(source, Fate::Deduplicated, group.deduplicated[i]);
        }
        let live = self.feed.receiver_count() > 0;
        for (row, props) in group.rows.iter().zip(&group.row_props) {
            self.index
                .insert(row.key, Entry::new(now, row.source, row.seen, *props));
            *per_site.entry(&row.site).or_default() += 1;
            if live {
                let _ = self.feed.send(Arc::new(FeedItem {
                    site: row.site.clone(),
                    event_name: row.event_name.clone(),
                    event_id: row.event_id.clone(),
                    source: row.source.as_str(),
                    occurred_at: format_timestamp(row.occurred_at),
                    url: row.url.clone(),
                }));
            }
        }
        for (key, t) in group.touched {
            let kept = t.replacement.as_ref().map_or(t.entry.kept(), |r| r.source);
            let entry = if t.props_known {
                Entry::new(t.entry.first_seen, kept, t.seen, t.last_props)
            } else {
                Entry::without_props(t.entry.first_seen, kept, t.seen)
            };
            self.index.insert(key, entry);
        }
        for (site, n) in per_site {
            self.quotas.add(site, n, now_micros);
        }
    }
}

/// Fills `base` with the keys it lacks from each of `texts`, in order.
fn fold<'a>(base: Option<String>, texts: impl IntoIterator<Item = &'a str>) -> Option<String> {
    texts
        .into_iter()
        .fold(base, |acc, text| fill_missing(acc.as_deref(), text).or(acc))
}

impl Group {
    fn push_new(&mut self, key: KeyHash, site: &Site, event: Event, now_micros: i64) {
        self.row_of.insert(key, self.rows.len());
        self.row_props.push(props_hash(event.properties.as_deref()));
        self.rows.push(row_of(key, site, event, now_micros));
    }

    /// A copy of an event first seen earlier in this same group.
    fn fold_into_new_row(&mut self, i: usize, site: &Site, mut event: Event, now_micros: i64) {
        let kept = &mut self.rows[i];
        let now = now_micros.div_euclid(1_000_000) as u32;
        let source = event.source;
        let resolution = Resolution::of(site.settings.policy, kept.source, now, source, now);
        if resolution == Resolution::Replace {
            let hash = props_hash(event.properties.as_deref());
            let mut row = row_of(kept.key, site, event, kept.received_at);
            row.seen |= kept.seen;
            if site.settings.merge_properties {
                row.properties = fold(row.properties, kept.properties.as_deref());
            }
            let old = std::mem::replace(kept, row);
            self.dups.push(DuplicateRow {
                site: old.site,
                event_id: old.event_id,
                event_name: old.event_name,
                source: old.source,
                received_at: old.received_at,
                kept_source: source,
            });
            self.row_props[i] = hash;
            return;
        }
        kept.seen |= source.bit();
        if site.settings.merge_properties {
            if let Some(text) = event.properties.take() {
                self.row_props[i] = props_hash(Some(&text));
                kept.properties = fold(kept.properties.take(), [text.as_str()]);
            }
        }
        let kept_source = kept.source;
        self.dups
            .push(dropped(site, event, now_micros, kept_source));
    }

    /// A copy of an event kept in the store, inside its window.
    fn fold_into_stored(
        &mut self,
        key: KeyHash,
        entry: Entry,
        site: &Site,
        mut event: Event,
        now_micros: i64,
    ) {
        let now = now_micros.div_euclid(1_000_000) as u32;
        let t = self.touched.entry(key).or_insert_with(|| Touch {
            entry,
            seen: entry.sources(),
            replacement: None,
            merges: Vec::new(),
            last_props: entry.props_hash(),
            props_known: entry.props_known(),
            merge: site.settings.merge_properties,
        });
        t.seen |= event.source.bit();
        let kept = t.replacement.as_ref().map_or(entry.kept(), |r| r.source);
        if Resolution::of(
            site.settings.policy,
            kept,
            t.entry.first_seen,
            event.source,
            now,
        ) == Resolution::Replace
        {
            let received = i64::from(t.entry.first_seen) * 1_000_000;
            t.last_props = props_hash(event.properties.as_deref());
            t.props_known = true;
            // The copy dropped is the one that was kept until now.
            self.dups.push(DuplicateRow {
                site: site.name.clone(),
                event_id: event.event_id.clone(),
                event_name: event.event_name.clone(),
                source: kept,
                received_at: received,
                kept_source: event.source,
            });
            t.replacement = Some(row_of(key, site, event, received));
            return;
        }
        let hash = props_hash(event.properties.as_deref());
        if site.settings.merge_properties {
            if let Some(text) = event.properties.take() {
                // Equal to a text already folded in: nothing to add, no read.
                if !(t.props_known && t.last_props == hash) {
                    t.merges.push(text);
                }
                t.last_props = hash;
                t.props_known = true;
            }
        }
        self.dups.push(dropped(site, event, now_micros, kept));
    }
}

fn row_of(key: KeyHash, site: &Site, e: Event, received_at: i64) -> EventRow {
    EventRow {
        site: site.name.clone(),
        event_id: e.event_id,
        event_name: e.event_name,
        source: e.source,
        seen: e.source.bit(),
        occurred_at: e.occurred_at.unwrap_or(received_at),
        received_at,
        session_id: e.session_id,
        visitor_id: e.visitor_id,
        url: e.url,
        referrer: e.referrer,
        properties: e.properties,
        key,
    }
}

fn dropped(site: &Site, e: Event, now_micros: i64, kept_source: Source) -> DuplicateRow {
    DuplicateRow {
        site: site.name.clone(),
        event_id: e.event_id,
        event_name: e.event_name,
        source: e.source,
        received_at: now_micros,
        kept_source,
    }
}
