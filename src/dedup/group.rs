//! One commit group's decisions, as pure functions: the writer feeds copies
//! in arrival order to [`Group::decide`], reads the stored rows the group
//! touches (only those [`Touch::needs_read`] names), lets [`Touch::resolve`]
//! work out each row's new state, writes, and after the commit folds the
//! summaries into the index. Test mode runs the same steps and skips the
//! write, so it answers exactly what live traffic would get.
//!
//! A copy is a duplicate when its id key, or else its secondary key, is
//! live: first among this group's new rows, then in the index. Copies of a
//! new row of this group fold into that row in memory; copies of a stored
//! row gather in a [`Touch`] per key they reached it by, and the touches of
//! a row reached by both its keys are made one ([`coalesce`]) so that its
//! copies fold in arrival order.

use super::props::{Incoming, Object, PropState, MAX_MERGES};
use super::{judge, Copy, Entry, History, KeyIndex, Resolution, Verdict};
use crate::domain::money::revenue_of;
use crate::domain::row::{Content, DroppedRow, EventRow, Matched, RowUpdate, Rule, StoredRow};
use crate::domain::{Event, KeyHash, Site, Source};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// What became of one copy: the per-event answer of test mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The arriving copy's source.
    pub source: Source,
    /// `accepted` (a new unique event) or `duplicate`.
    pub outcome: Outcome,
    /// Why it is a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Rule>,
    /// The key it matched: `event_id` or the declared property.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_key: Option<String>,
    /// The secondary key's value it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_value: Option<String>,
    /// The source of the copy kept for the event.
    pub kept_source: Source,
    /// Whether this copy replaced the kept one (`prefer_pixel`).
    pub replaces_kept: bool,
    /// Property keys this copy set on the kept row.
    pub filled: Object,
    /// The copy's match keys as they would be stored, normalized and
    /// SHA-256 hashed (test mode answers only; live answers leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
}

/// The two outcomes a live answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new unique event.
    Accepted,
    /// A copy of an event already kept.
    Duplicate,
}

/// A copy waiting in a [`Touch`].
#[derive(Debug)]
struct Pending {
    copy: Copy,
    rule: Rule,
    matched: Matched,
    /// Its index in [`Group::decisions`].
    decision: usize,
}

/// The copies that reached one stored row through one key in this group.
#[derive(Debug)]
pub struct Touch {
    /// The key they reached it by (the row's id key or secondary key).
    pub addr: KeyHash,
    /// The index entry before the group: window start and row summary.
    pub entry: Entry,
    /// The row's site.
    pub site: Arc<Site>,
    copies: Vec<Pending>,
}

/// A touch worked out: the row's change, the copies it dropped, and the
/// index entries to set after the commit.
#[derive(Debug, Default)]
pub struct Resolved {
    /// The row's change, if any.
    pub update: Option<RowUpdate>,
    /// Dropped copies to record.
    pub dropped: Vec<DroppedRow>,
    /// Entries to refresh: (key, entry) for each key of the row known here.
    pub entries: Vec<(KeyHash, Entry)>,
}

/// One group's staged decisions.
#[derive(Debug)]
pub struct Group {
    now_micros: i64,
    /// New unique events.
    pub rows: Vec<EventRow>,
    states: Vec<Option<PropState>>,
    row_of: HashMap<KeyHash, usize>,
    /// Copies of stored rows, by the key they reached them by.
    pub touches: Vec<Touch>,
    touch_of: HashMap<KeyHash, usize>,
    /// Copies dropped without reading the store.
    pub dropped: Vec<DroppedRow>,
    /// One decision per copy, in the order [`Group::decide`] saw them.
    pub decisions: Vec<Decision>,
}

impl Group {
    /// An empty group deciding at `now_micros`.
    pub fn new(now_micros: i64) -> Self {
        Self {
            now_micros,
            rows: Vec::new(),
            states: Vec::new(),
            row_of: HashMap::new(),
            touches: Vec::new(),
            touch_of: HashMap::new(),
            dropped: Vec::new(),
            decisions: Vec::new(),
        }
    }

    fn now(&self) -> u32 {
        self.now_micros.div_euclid(1_000_000) as u32
    }

    /// The entry of `key` if its window is open.
    fn live(&self, index: &KeyIndex, site: &Site, key: &KeyHash) -> Option<Entry> {
        self.open(index.get(key), site)
    }

    /// `entry` if its window is open.
    fn open(&self, entry: Option<Entry>, site: &Site) -> Option<Entry> {
        match judge(entry, self.now(), site.settings.window_secs) {
            Verdict::Duplicate(e) => Some(e),
            Verdict::New => None,
        }
    }

    /// The entry of `key` if its window is open, from the index or else
    /// from what an import found in the store: a local import lets the index
    /// forget its keys and looks every key up instead, so a key live in the
    /// store may be missing from the index. The later window is the live one.
    fn live_or_stored(
        &self,
        index: &KeyIndex,
        history: &History,
        site: &Site,
        key: &KeyHash,
    ) -> Option<Entry> {
        let entry = match (index.get(key), history.get(key).copied()) {
            (Some(a), Some(b)) => Some(a.later(b)),
            (a, b) => a.or(b),
        };
        self.open(entry, site)
    }

    /// Whether `key` is live in this group or the index.
    pub fn is_live(&self, index: &KeyIndex, site: &Site, key: &KeyHash) -> bool {
        self.row_of.contains_key(key) || self.live(index, site, key).is_some()
    }

    /// Whether an import must look `copy`'s keys up in the store: unless
    /// one of them is live.
    pub fn needs_history(&self, index: &KeyIndex, site: &Site, copy: &Copy) -> bool {
        let secondary = copy.secondary.as_ref().map(|s| s.key);
        !std::iter::once(copy.key)
            .chain(secondary)
            .any(|k| self.is_live(index, site, &k))
    }

    /// Decides one copy; `history` holds what an import found in the store
    /// of its keys: a row inside its window is live, one past it is history.
    /// Returns the copy's index in [`Group::decisions`] (final once the
    /// touches are resolved).
    pub fn decide(
        &mut self,
        index: &KeyIndex,
        site: &Arc<Site>,
        copy: Copy,
        history: &History,
    ) -> usize {
        let by_property = |c: &Copy| {
            let s = c.secondary.as_ref().expect("matched by its secondary key");
            Matched::Property {
                name: s.property.clone(),
                value: s.value.clone(),
            }
        };
        if let Some(&i) = self.row_of.get(&copy.key) {
            return self.fold_new(i, site, copy, Rule::SameKey, Matched::EventId);
        }
        if let Some(entry) = self.live_or_stored(index, history, site, &copy.key) {
            return self.touch(copy.key, entry, site, copy, Rule::SameKey, Matched::EventId);
        }
        if let Some(skey) = copy.secondary.as_ref().map(|s| s.key) {
            if let Some(&i) = self.row_of.get(&skey) {
                let m = by_property(&copy);
                return self.fold_new(i, site, copy, Rule::SecondaryKey, m);
            }
            if let Some(entry) = self.live_or_stored(index, history, site, &skey) {
                let m = by_property(&copy);
                return self.touch(skey, entry, site, copy, Rule::SecondaryKey, m);
            }
        }
        let found = history
            .get(&copy.key)
            .map(|e| (e.kept(), Matched::EventId))
            .or_else(|| {
                let s = copy.secondary.as_ref()?;
                history.get(&s.key).map(|e| (e.kept(), by_property(&copy)))
            });
        if let Some((kept, matched)) = found {
            let (rule, key, value) = matched_parts(Rule::History, &matched);
            self.decisions.push(Decision {
                source: copy.event.source,
                outcome: Outcome::Duplicate,
                rule: Some(rule),
                matched_key: Some(key),
                matched_value: value,
                kept_source: kept,
                replaces_kept: false,
                filled: Object::new(),
                user_data: None,
            });
            let row = dropped(
                site,
                copy.event,
                self.now_micros,
                kept,
                Rule::History,
                matched,
                None,
            );
            self.dropped.push(row);
            return self.decisions.len() - 1;
        }
        self.push_new(site, copy)
    }

    fn push_new(&mut self, site: &Arc<Site>, copy: Copy) -> usize {
        let i = self.rows.len();
        self.row_of.insert(copy.key, i);
        if let Some(s) = &copy.secondary {
            self.row_of.insert(s.key, i);
        }
        let source = copy.event.source;
        self.rows.push(EventRow {
            site: site.clone(),
            occurred_at: copy.event.occurred_at.unwrap_or(self.now_micros),
            received_at: self.now_micros,
            seen: source.bit(),
            key: copy.key,
            skey: copy.secondary.map(|s| s.key),
            pixel_keys: None,
            merges: 0,
            fingerprint: copy.fingerprint,
            event: copy.event,
        });
        self.states.push(None);
        self.decisions.push(Decision {
            source,
            outcome: Outcome::Accepted,
            rule: None,
            matched_key: None,
            matched_value: None,
            kept_source: source,
            replaces_kept: false,
            filled: Object::new(),
            user_data: None,
        });
        self.decisions.len() - 1
    }

    /// A copy of an event first seen earlier in this same group.
    fn fold_new(
        &mut self,
        i: usize,
        site: &Arc<Site>,
        copy: Copy,
        rule: Rule,
        matched: Matched,
    ) -> usize {
        let now = self.now();
        let now_micros = self.now_micros;
        let merge = site.settings.merge_properties;
        let row = &mut self.rows[i];
        let source = copy.event.source;
        row.seen |= source.bit();
        let (r, key, value) = matched_parts(rule, &matched);
        let mut decision = Decision {
            source,
            outcome: Outcome::Duplicate,
            rule: Some(r),
            matched_key: Some(key),
            matched_value: value,
            kept_source: row.event.source,
            replaces_kept: false,
            filled: Object::new(),
            user_data: None,
        };
        let resolution = Resolution::of(site.settings.policy, row.event.source, now, source, now);
        if resolution == Resolution::Replace {
            let state = self.states[i].get_or_insert_with(|| state_of(&row.event));
            let revenue = revenue_of(&state.props, &site.settings);
            let mut event = copy.event;
            let replaced_by = std::mem::replace(&mut event.event_id, row.event.event_id.clone());
            let props = parse(event.properties.as_deref());
            let user = parse(event.user_data.as_deref());
            let kept_from_old = state.replace(incoming(&props, &user, &event), merge);
            let old = std::mem::replace(&mut row.event, event);
            row.occurred_at = row.event.occurred_at.unwrap_or(row.occurred_at);
            row.fingerprint = copy.fingerprint;
            decision.kept_source = source;
            decision.replaces_kept = true;
            let filled = text_of(&kept_from_old);
            self.dropped.push(DroppedRow {
                site: site.clone(),
                event_id: old.event_id,
                event_name: old.event_name,
                source: old.source,
                received_at: now_micros,
                kept_source: source,
                rule: Rule::Replaced,
                matched,
                filled,
                revenue,
                replaced_by: Some(replaced_by),
            });
        } else {
            let mut filled = Object::new();
            if copy.carries_content() && copy.fingerprint != row.fingerprint {
                let state = self.states[i].get_or_insert_with(|| state_of(&row.event));
                let props = parse(copy.event.properties.as_deref());
                let user = parse(copy.event.user_data.as_deref());
                filled = state.fold(incoming(&props, &user, &copy.event), merge);
                row.fingerprint = copy.fingerprint;
            }
            let kept = row.event.source;
            let text = text_of(&filled);
            decision.filled = filled;
            self.dropped.push(dropped(
                site, copy.event, now_micros, kept, rule, matched, text,
            ));
        }
        self.decisions.push(decision);
        self.decisions.len() - 1
    }

    fn touch(
        &mut self,
        addr: KeyHash,
        entry: Entry,
        site: &Arc<Site>,
        copy: Copy,
        rule: Rule,
        matched: Matched,
    ) -> usize {
        let (r, key, value) = matched_parts(rule, &matched);
        self.decisions.push(Decision {
            source: copy.event.source,
            outcome: Outcome::Duplicate,
            rule: Some(r),
            matched_key: Some(key),
            matched_value: value,
            kept_source: entry.kept(),
            replaces_kept: false,
            filled: Object::new(),
            user_data: None,
        });
        let decision = self.decisions.len() - 1;
        let t = *self.touch_of.entry(addr).or_insert_with(|| {
            self.touches.push(Touch {
                addr,
                entry,
                site: site.clone(),
                copies: Vec::new(),
            });
            self.touches.len() - 1
        });
        self.touches[t].copies.push(Pending {
            copy,
            rule,
            matched,
            decision,
        });
        decision
    }

    /// Writes folded state back into the new rows; call once every copy is
    /// decided.
    pub fn finish_rows(&mut self) {
        for (row, state) in self.rows.iter_mut().zip(self.states.iter_mut()) {
            if let Some(state) = state.take() {
                let authenticated = row.event.is_authenticated();
                row.event.properties = state.props_text();
                row.event.user_data = state.user_data_text();
                row.pixel_keys = state.pixel_keys_text(authenticated);
                row.merges = state.merges;
            }
        }
    }

    /// Takes the touches, to resolve after reading what they need.
    pub fn take_touches(&mut self) -> Vec<Touch> {
        self.touch_of.clear();
        std::mem::take(&mut self.touches)
    }

    /// Records what a resolved touch did to its copies' decisions and dropped rows.
    pub fn absorb(&mut self, resolved: &mut Resolved, decisions: Vec<(usize, Decision)>) {
        for (i, v) in decisions {
            self.decisions[i] = v;
        }
        self.dropped.append(&mut resolved.dropped);
    }

    /// Unique events accepted and copies deduplicated, per [`Source::index`]
    /// of the arriving copy, for the decisions in `range`.
    pub fn counts(&self, range: std::ops::Range<usize>) -> (u64, u64) {
        let accepted = self.decisions[range.clone()]
            .iter()
            .filter(|v| v.outcome == Outcome::Accepted)
            .count() as u64;
        (accepted, range.len() as u64 - accepted)
    }
}

/// Makes one touch of the touches that read one stored row (having reached
/// it by its id key and by its secondary key): the first of them, holding
/// all their copies in arrival order, so that each fills in or replaces in
/// the order it came. `read` pairs each touch with the row read for it;
/// touches whose row is gone stay as they are.
pub fn coalesce(read: Vec<(Touch, Option<StoredRow>)>) -> Vec<(Touch, Option<StoredRow>)> {
    let mut out: Vec<(Touch, Option<StoredRow>)> = Vec::with_capacity(read.len());
    let mut row_at: HashMap<(KeyHash, u32), usize> = HashMap::new();
    for (touch, stored) in read {
        let row = stored.as_ref().map(|s| (s.key, touch.entry.first_seen));
        match row.and_then(|r| row_at.get(&r).copied()) {
            Some(i) => {
                let first = &mut out[i].0;
                first.copies.extend(touch.copies);
                first.copies.sort_by_key(|p| p.decision);
            }
            None => {
                if let Some(r) = row {
                    row_at.insert(r, out.len());
                }
                out.push((touch, stored));
            }
        }
    }
    out
}

impl Touch {
    /// Whether working out this touch needs the stored row: a copy may
    /// replace the kept one, or may carry content the row has not seen and
    /// the row can still take.
    pub fn needs_read(&self, now: u32) -> bool {
        let policy = self.site.settings.policy;
        let mut print = self.entry.fingerprint();
        for p in &self.copies {
            let replace = Resolution::of(
                policy,
                self.entry.kept(),
                self.entry.first_seen,
                p.copy.event.source,
                now,
            );
            if replace == Resolution::Replace {
                return true;
            }
            // Past the merge limit only an authenticated copy can still
            // change the row (it overwrites a pixel's values).
            let may_change = self.entry.merges() < MAX_MERGES || p.copy.event.is_authenticated();
            if p.copy.carries_content() && may_change {
                if print != Some(p.copy.fingerprint) {
                    return true;
                }
                print = Some(p.copy.fingerprint);
            }
        }
        false
    }

    /// Works out the row's change from its stored state (`None`: no read was
    /// needed, or the row is gone) and the decisions of its copies.
    pub fn resolve(
        self,
        stored: Option<StoredRow>,
        now_micros: i64,
        decisions: &[Decision],
    ) -> (Resolved, Vec<(usize, Decision)>) {
        match stored {
            Some(stored) => self.resolve_read(stored, now_micros, decisions),
            None => self.resolve_unread(now_micros, decisions),
        }
    }

    fn resolve_unread(
        self,
        now_micros: i64,
        decisions: &[Decision],
    ) -> (Resolved, Vec<(usize, Decision)>) {
        let kept = self.entry.kept();
        let mut seen = self.entry.sources();
        let mut print = self.entry.fingerprint().unwrap_or(0);
        let mut out = Resolved::default();
        let mut changed = Vec::new();
        for p in self.copies {
            seen |= p.copy.event.source.bit();
            if p.copy.carries_content() {
                print = p.copy.fingerprint;
            }
            changed.push((p.decision, decisions[p.decision].clone()));
            let row = dropped(
                &self.site,
                p.copy.event,
                now_micros,
                kept,
                p.rule,
                p.matched,
                None,
            );
            out.dropped.push(row);
        }
        if seen != self.entry.sources() {
            out.update = Some(RowUpdate {
                addr: self.addr,
                start: self.entry.first_seen,
                seen,
                content: None,
                kept: None,
            });
        }
        let entry = Entry::new(
            self.entry.first_seen,
            kept,
            seen,
            self.entry.merges(),
            print,
        );
        out.entries.push((self.addr, entry));
        (out, changed)
    }

    fn resolve_read(
        self,
        stored: StoredRow,
        now_micros: i64,
        decisions: &[Decision],
    ) -> (Resolved, Vec<(usize, Decision)>) {
        let now = now_micros.div_euclid(1_000_000) as u32;
        let settings = &self.site.settings;
        let mut state = PropState::restore(
            stored.properties.as_deref(),
            stored.user_data.as_deref(),
            stored.pixel_keys.as_deref(),
            stored.source != Source::Pixel,
            stored.merges,
        );
        let before = state.clone();
        let mut kept_source = stored.source;
        let mut seen = stored.seen;
        let mut kept_event: Option<Event> = None;
        let mut print = self.entry.fingerprint().unwrap_or(0);
        let mut out = Resolved::default();
        let mut changed = Vec::new();
        for p in self.copies {
            let source = p.copy.event.source;
            let carries = p.copy.carries_content();
            let fingerprint = p.copy.fingerprint;
            seen |= source.bit();
            let mut decision = decisions[p.decision].clone();
            let props = parse(p.copy.event.properties.as_deref());
            let user = parse(p.copy.event.user_data.as_deref());
            let resolution = Resolution::of(
                settings.policy,
                kept_source,
                self.entry.first_seen,
                source,
                now,
            );
            if resolution == Resolution::Replace {
                let revenue = revenue_of(&state.props, settings);
                let kept_from_old = state.replace(
                    incoming(&props, &user, &p.copy.event),
                    settings.merge_properties,
                );
                let mut event = p.copy.event;
                let replaced_by = std::mem::replace(&mut event.event_id, stored.event_id.clone());
                out.dropped.push(DroppedRow {
                    site: self.site.clone(),
                    event_id: stored.event_id.clone(),
                    event_name: event.event_name.clone(),
                    source: kept_source,
                    received_at: now_micros,
                    kept_source: source,
                    rule: Rule::Replaced,
                    matched: p.matched,
                    filled: text_of(&kept_from_old),
                    revenue,
                    replaced_by: Some(replaced_by),
                });
                kept_source = source;
                kept_event = Some(event);
                decision.replaces_kept = true;
            } else {
                let filled = state.fold(
                    incoming(&props, &user, &p.copy.event),
                    settings.merge_properties,
                );
                let text = text_of(&filled);
                decision.filled = filled;
                let row = dropped(
                    &self.site,
                    p.copy.event,
                    now_micros,
                    kept_source,
                    p.rule,
                    p.matched,
                    text,
                );
                out.dropped.push(row);
            }
            decision.kept_source = kept_source;
            if carries || decision.replaces_kept {
                print = fingerprint;
            }
            changed.push((p.decision, decision));
        }
        // A later copy kept under prefer_pixel is the kept source of every
        // decision of this touch.
        for (_, v) in changed.iter_mut() {
            v.kept_source = kept_source;
        }
        let authenticated = kept_source != Source::Pixel;
        let content = (state != before || kept_event.is_some()).then(|| Content {
            properties: state.props_text(),
            user_data: state.user_data_text(),
            pixel_keys: state.pixel_keys_text(authenticated),
            merges: state.merges,
            fingerprint: print,
        });
        if content.is_some() || seen != stored.seen {
            out.update = Some(RowUpdate {
                addr: self.addr,
                start: self.entry.first_seen,
                seen,
                content,
                kept: kept_event,
            });
        }
        let entry = Entry::new(
            self.entry.first_seen,
            kept_source,
            seen,
            state.merges,
            print,
        );
        out.entries.push((stored.key, entry));
        if let Some(skey) = stored.skey {
            out.entries.push((skey, entry));
        }
        (out, changed)
    }
}

fn matched_parts(rule: Rule, m: &Matched) -> (Rule, String, Option<String>) {
    match m {
        Matched::EventId => (rule, "event_id".to_owned(), None),
        Matched::Property { name, value } => (rule, name.clone(), Some(value.clone())),
    }
}

fn parse(text: Option<&str>) -> Option<Object> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

fn incoming<'a>(props: &'a Option<Object>, user: &'a Option<Object>, e: &Event) -> Incoming<'a> {
    Incoming {
        props: props.as_ref(),
        user_data: user.as_ref(),
        authenticated: e.is_authenticated(),
    }
}

fn state_of(e: &Event) -> PropState {
    let props = parse(e.properties.as_deref());
    let user = parse(e.user_data.as_deref());
    PropState::of_kept(incoming(&props, &user, e))
}

fn text_of(o: &Object) -> Option<String> {
    (!o.is_empty()).then(|| serde_json::Value::Object(o.clone()).to_string())
}

fn dropped(
    site: &Arc<Site>,
    e: Event,
    now_micros: i64,
    kept_source: Source,
    rule: Rule,
    matched: Matched,
    filled: Option<String>,
) -> DroppedRow {
    let revenue = parse(e.properties.as_deref()).and_then(|p| revenue_of(&p, &site.settings));
    DroppedRow {
        site: site.clone(),
        event_id: e.event_id,
        event_name: e.event_name,
        source: e.source,
        received_at: now_micros,
        kept_source,
        rule,
        matched,
        filled,
        revenue,
        replaced_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SiteSettings;

    /// A key the index let go (a long local import) is as live as the
    /// row an import's lookup found for it while that row's window is
    /// open, and history after; the later of two entries is the live one.
    #[test]
    fn a_stored_row_the_index_let_go_is_live_within_its_window_and_history_after() {
        let site = Arc::new(Site {
            id: 1,
            name: "s".into(),
            site_key: "k".into(),
            token_hash: String::new(),
            origins: vec![],
            settings: SiteSettings::default(),
        });
        let window = site.settings.window_secs;
        let copy = || {
            let e = Event::parse(r#"{"event_id":"o1","event_name":"order"}"#, Source::Import);
            Copy::prepare(&site, e.unwrap())
        };
        let now: u32 = 1_800_000_000;
        let stored = |start: u32| Entry::new(start, Source::Server, Source::Server.bit(), 0, 0);
        let decide = |index: &KeyIndex, found: Option<Entry>| {
            let mut group = Group::new(i64::from(now) * 1_000_000);
            let history: History = found.map(|e| (copy().key, e)).into_iter().collect();
            let i = group.decide(index, &site, copy(), &history);
            (group.decisions[i].clone(), group.touches.len())
        };
        let empty = KeyIndex::default();
        let (d, touches) = decide(&empty, Some(stored(now - 60)));
        assert_eq!(
            (d.outcome, d.rule, touches),
            (Outcome::Duplicate, Some(Rule::SameKey), 1)
        );
        let (d, touches) = decide(&empty, Some(stored(now - window - 1)));
        assert_eq!((d.rule, touches), (Some(Rule::History), 0));
        let (d, _) = decide(&empty, None);
        assert_eq!(d.outcome, Outcome::Accepted);
        // An expired entry in the index does not hide a later live row.
        let mut index = KeyIndex::default();
        index.insert(copy().key, stored(now - window - 1));
        let (_, touches) = decide(&index, Some(stored(now - 60)));
        assert_eq!(touches, 1);
    }
}
