//! Near misses: pairs of unique events whose keys almost match, sent by
//! different sources — the most common reason a pixel copy and a server
//! copy fail to deduplicate (SPEC §5). Found, counted and shown; never merged.
//!
//! Three kinds: ids that differ only by case or surrounding space
//! (`ord_42` / `ORD_42 `), ids one of which is the other with a prefix or
//! suffix cut at a separator (`ord_42` / `42`, `42` / `42-1`), and names
//! that differ only by case or separator (`Purchase` / `purchase`,
//! `order.completed` / `order_completed`) under the same id.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// One unique event as the report reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Event name.
    pub event_name: String,
    /// Event id.
    pub event_id: String,
    /// Mask of [`super::Source::bit`]s that sent it.
    pub sources: u8,
}

/// How two keys almost match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Ids equal but for case or surrounding space.
    CaseOrSpace,
    /// One id is the other with a prefix or suffix (`ord_42` / `42`).
    PrefixOrSuffix,
    /// Names equal but for case or separators, under the same id.
    EventName,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::CaseOrSpace, Kind::PrefixOrSuffix, Kind::EventName];

    /// What the kind means, for people.
    pub fn label(self) -> &'static str {
        match self {
            Kind::CaseOrSpace => "ids that differ only by case or surrounding space",
            Kind::PrefixOrSuffix => "ids that differ by a prefix or suffix",
            Kind::EventName => "event names that differ only by case or separator",
        }
    }
}

/// One near-miss pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// The kind.
    pub kind: Kind,
    /// One form: name, id, sources.
    pub a: Form,
    /// The other form.
    pub b: Form,
}

/// One of the two forms of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Form {
    /// Event name.
    pub event_name: String,
    /// Event id.
    pub event_id: String,
    /// The sources that sent this form.
    pub sources: Vec<String>,
}

/// Pairs of one kind: how many, and a few to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindReport {
    /// The kind.
    pub kind: Kind,
    /// Pairs found.
    pub count: usize,
    /// The first few pairs.
    pub examples: Vec<Pair>,
}

/// The report over a set of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Unique events checked.
    pub events_checked: usize,
    /// One entry per kind, in a fixed order.
    pub kinds: Vec<KindReport>,
}

/// Examples kept per kind.
pub const EXAMPLES: usize = 5;

/// Separators an id is cut at for the prefix/suffix kind.
const SEPARATORS: &[char] = &['_', '-', '.', ':', '#', '/', ' ', '|'];

/// An id as compared: trimmed and lower-cased (borrowed when it already is).
fn norm_id(id: &str) -> Cow<'_, str> {
    let t = id.trim();
    if t.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
        Cow::Owned(t.to_lowercase())
    } else {
        Cow::Borrowed(t)
    }
}

fn norm_name(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '.' | '_' | '-' | ' ' | ':' | '/'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The shorter ids an id could be mistaken for: each prefix and suffix cut
/// at a separator, at least two characters long and holding a digit (order
/// numbers, not words).
fn cores(id: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, c) in id.char_indices() {
        if SEPARATORS.contains(&c) {
            for part in [&id[..i], &id[i + c.len_utf8()..]] {
                let part = part.trim_matches(SEPARATORS);
                if part.len() >= 2 && part.chars().any(|c| c.is_ascii_digit()) && part != id {
                    out.push(part);
                }
            }
        }
    }
    out
}

fn source_names(mask: u8) -> Vec<String> {
    super::Source::ALL
        .iter()
        .filter(|s| mask & s.bit() != 0)
        .map(|s| s.as_str().to_owned())
        .collect()
}

fn form(s: &Seen) -> Form {
    Form {
        event_name: s.event_name.clone(),
        event_id: s.event_id.clone(),
        sources: source_names(s.sources),
    }
}

/// Each event's normalized key: its name's class (names equal but for case
/// and separators share one) and its normalized id.
fn keys(events: &[Seen]) -> Vec<(u32, Cow<'_, str>)> {
    let mut classes: HashMap<String, u32> = HashMap::new();
    let mut class_of: HashMap<&str, u32> = HashMap::new();
    events
        .iter()
        .map(|e| {
            let next = classes.len() as u32;
            let class = *class_of
                .entry(&e.event_name)
                .or_insert_with(|| *classes.entry(norm_name(&e.event_name)).or_insert(next));
            (class, norm_id(&e.event_id))
        })
        .collect()
}

/// Pairs found so far, each once, only between forms no source shares.
struct Found<'a> {
    events: &'a [Seen],
    pairs: Vec<Pair>,
    seen: HashSet<(usize, usize)>,
}

impl Found<'_> {
    fn add(&mut self, kind: Kind, i: usize, j: usize) {
        let (a, b) = (&self.events[i], &self.events[j]);
        if a.sources & b.sources != 0 || !self.seen.insert((i.min(j), i.max(j))) {
            return;
        }
        self.pairs.push(Pair {
            kind,
            a: form(a),
            b: form(b),
        });
    }

    fn report(mut self) -> Report {
        // A stable order (the map the pairs came from is not), so the same
        // store always shows the same examples.
        self.pairs.sort_by(|x, y| {
            (
                &x.a.event_name,
                &x.a.event_id,
                &x.b.event_name,
                &x.b.event_id,
            )
                .cmp(&(
                    &y.a.event_name,
                    &y.a.event_id,
                    &y.b.event_name,
                    &y.b.event_id,
                ))
        });
        Report {
            events_checked: self.events.len(),
            kinds: Kind::ALL
                .iter()
                .map(|k| {
                    let of_kind: Vec<&Pair> = self.pairs.iter().filter(|p| p.kind == *k).collect();
                    KindReport {
                        kind: *k,
                        count: of_kind.len(),
                        examples: of_kind.into_iter().take(EXAMPLES).cloned().collect(),
                    }
                })
                .collect(),
        }
    }
}

/// Finds every near-miss pair among `events`.
///
/// Events are chained by normalized key (the first and last of each key in
/// a map, a link from each event to the next of its key) rather than a list
/// per key: nearly every key has one event, and the report reads up to a
/// million of them (measured over a million: ~1.7 s with a `Vec` and two
/// `String`s a key, 0.4 s so).
pub fn find(events: &[Seen]) -> Report {
    const END: usize = usize::MAX;
    let keys = keys(events);
    let mut ends: HashMap<(u32, &str), (usize, usize)> = HashMap::with_capacity(events.len());
    let mut next = vec![END; events.len()];
    for (i, (class, id)) in keys.iter().enumerate() {
        ends.entry((*class, id.as_ref()))
            .and_modify(|(_, last)| {
                next[*last] = i;
                *last = i;
            })
            .or_insert((i, i));
    }
    let members =
        |first: usize| std::iter::successors(Some(first), |&i| Some(next[i]).filter(|&n| n != END));
    let mut found = Found {
        events,
        pairs: Vec::new(),
        seen: HashSet::new(),
    };
    for &(first, _) in ends.values().filter(|(first, last)| first != last) {
        let group: Vec<usize> = members(first).collect();
        for (x, &i) in group.iter().enumerate() {
            for &j in &group[x + 1..] {
                let kind = if events[i].event_name != events[j].event_name {
                    Kind::EventName
                } else {
                    Kind::CaseOrSpace
                };
                found.add(kind, i, j);
            }
        }
    }
    for (i, (class, id)) in keys.iter().enumerate() {
        for core in cores(id) {
            if let Some(&(first, _)) = ends.get(&(*class, core)) {
                for j in members(first) {
                    found.add(Kind::PrefixOrSuffix, i, j);
                }
            }
        }
    }
    found.report()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIXEL: u8 = 1;
    const SERVER: u8 = 2;

    fn seen(name: &str, id: &str, sources: u8) -> Seen {
        Seen {
            event_name: name.into(),
            event_id: id.into(),
            sources,
        }
    }

    fn counts(r: &Report) -> [usize; 3] {
        [r.kinds[0].count, r.kinds[1].count, r.kinds[2].count]
    }

    #[test]
    fn each_kind_is_found_between_sources() {
        let r = find(&[
            seen("order.completed", "ord_42", PIXEL),
            seen("order.completed", "ORD_42 ", SERVER),
            seen("order.completed", "77", PIXEL),
            seen("order.completed", "ord_77", SERVER),
            seen("order.completed", "88", PIXEL),
            seen("order.completed", "88-1", SERVER),
            seen("Purchase", "o-9", PIXEL),
            seen("purchase", "o-9", SERVER),
            seen("order_completed", "x1", PIXEL),
            seen("order.completed", "x1", SERVER),
        ]);
        assert_eq!(counts(&r), [1, 2, 2], "{r:#?}");
        assert_eq!(r.events_checked, 10);
    }

    #[test]
    fn the_same_source_or_distinct_words_are_no_pair() {
        let r = find(&[
            seen("order.completed", "ord_42", SERVER),
            seen("order.completed", "ORD_42", SERVER),
            seen("order.completed", "42", PIXEL | SERVER),
            seen("signup", "user_abc", PIXEL),
            seen("signup", "abc", SERVER),
            seen("page.view", "evt_1a2b3c", PIXEL),
            seen("order.completed", "1a2b3c", SERVER),
            seen("order.completed", "420", PIXEL),
        ]);
        assert_eq!(counts(&r), [0, 0, 0], "{r:#?}");
    }

    /// The report's counts by its definition, pair by pair, with its own
    /// plain normalization (not `find`'s fast one).
    fn pairwise(events: &[Seen]) -> [usize; 3] {
        let id = |s: &Seen| s.event_id.trim().to_lowercase();
        let name = |s: &Seen| {
            s.event_name
                .to_lowercase()
                .replace(['.', '_', '-', ' ', ':', '/'], "")
        };
        let mut c = [0; 3];
        for (i, a) in events.iter().enumerate() {
            for b in &events[i + 1..] {
                let (x, y) = (id(a), id(b));
                if a.sources & b.sources != 0 || name(a) != name(b) {
                    continue;
                }
                if x == y {
                    c[if a.event_name != b.event_name { 2 } else { 0 }] += 1;
                } else if cores(&x).contains(&y.as_str()) || cores(&y).contains(&x.as_str()) {
                    c[1] += 1;
                }
            }
        }
        c
    }

    proptest::proptest! {
        #[test]
        fn find_counts_what_the_pairwise_definition_counts(
            events in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["order.completed", "Order_Completed", "signup", "SIGNUP"]),
                    "[aBÉé1 2_-]{0,6}",
                    1u8..8,
                ),
                0..40,
            )
        ) {
            let events: Vec<Seen> = events.iter().map(|(n, id, s)| seen(n, id, *s)).collect();
            let report = find(&events);
            proptest::prop_assert_eq!(counts(&report), pairwise(&events));
            proptest::prop_assert_eq!(report.events_checked, events.len());
        }
    }

    #[test]
    fn cores_cut_at_separators_only() {
        assert_eq!(cores("ord_42"), vec!["42"]);
        assert!(cores("42-1").contains(&"42"));
        assert!(cores("order42").is_empty());
        assert!(cores("ord_x").is_empty(), "no digit");
    }
}
