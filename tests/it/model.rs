//! A model-based property test of deduplication: random interleavings of
//! pixel, server and import copies, retries, secondary-key collisions,
//! window expiry and restarts go through the real writer and a real DuckDB
//! file, and the stored events, the dropped copies and every answer's counts
//! are checked against a plain in-memory model of SPEC §3.
//!
//! The model is declarative where the code is incremental: it keeps every
//! copy of every event and computes the kept row from them (the kept copy's
//! properties, filled in by the others in arrival order, an authenticated
//! value winning on a key a pixel copy also carries).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use tally::app::App;
use tally::config::Config;
use tally::domain::{Clock as _, DedupPolicy, Event, ManualClock, Source};
use tally::ingest::Mode;

const WINDOW: u32 = 3_600;
const NAMES: [&str; 2] = ["order", "signup"];
const IDS: [&str; 4] = ["a", "b", "c", "A"];

#[derive(Debug, Clone)]
struct CopySpec {
    name: &'static str,
    id: &'static str,
    source: Source,
    props: Map<String, Value>,
}

#[derive(Debug, Clone)]
enum Op {
    Send(Vec<CopySpec>, bool),
    Advance(i64),
    Restart,
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Pixel),
        Just(Source::Server),
        Just(Source::Import)
    ]
}

fn props() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(prop_oneof![
            Just(json!(1)),
            Just(json!("1")),
            Just(json!(2))
        ]),
        prop::option::of(0..3i64),
        prop::option::of(0..3i64),
    )
        .prop_map(|(oid, x, y)| {
            let mut m = Map::new();
            if let Some(v) = oid {
                m.insert("oid".into(), v);
            }
            if let Some(v) = x {
                m.insert("x".into(), json!(v));
            }
            if let Some(v) = y {
                m.insert("y".into(), json!(v));
            }
            m
        })
}

fn copy_spec() -> impl Strategy<Value = CopySpec> {
    (0..NAMES.len(), 0..IDS.len(), source(), props()).prop_map(|(n, i, source, props)| CopySpec {
        name: NAMES[n],
        id: IDS[i],
        source,
        props,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec(copy_spec(), 1..4), prop::bool::weighted(0.15))
            .prop_map(|(c, import)| Op::Send(c, import)),
        2 => prop_oneof![Just(1i64), Just(30), Just(61), Just(1_800), Just(3_600)].prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

/// One logical event of the model.
#[derive(Debug, Clone)]
struct ModelEvent {
    name: &'static str,
    id: &'static str,
    oid: Option<String>,
    start: i64,
    /// Copies absorbed, in arrival order, with the index of the kept one
    /// and of every copy kept so far, in the order they were kept.
    copies: Vec<CopySpec>,
    kept: usize,
    kept_history: Vec<usize>,
}

fn oid_text(c: &CopySpec) -> Option<String> {
    if c.name != "order" {
        return None;
    }
    match c.props.get("oid")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Default)]
struct Model {
    policy: Option<DedupPolicy>,
    events: Vec<ModelEvent>,
    dups: Vec<(String, &'static str, &'static str)>,
}

impl Model {
    fn live(&self, now: i64, f: impl Fn(&ModelEvent) -> bool) -> Option<usize> {
        self.events
            .iter()
            .rposition(|e| f(e) && now - e.start < i64::from(WINDOW))
    }

    /// Applies one copy; whether it is a new unique event.
    fn apply(&mut self, c: CopySpec, now: i64, import: bool) -> bool {
        let oid = oid_text(&c);
        let by_key = self.live(now, |e| e.name == c.name && e.id == c.id);
        let by_secondary = || {
            oid.as_ref()
                .and_then(|o| self.live(now, |e| e.name == c.name && e.oid.as_ref() == Some(o)))
        };
        let hit = by_key
            .map(|i| (i, "same_key"))
            .or_else(|| by_secondary().map(|i| (i, "secondary_key")));
        let Some((i, rule)) = hit else {
            let history = import
                && self
                    .events
                    .iter()
                    .any(|e| e.name == c.name && (e.id == c.id || (oid.is_some() && e.oid == oid)));
            if history {
                self.dups
                    .push((c.id.to_owned(), c.source.as_str(), "history"));
                return false;
            }
            self.events.push(ModelEvent {
                name: c.name,
                id: c.id,
                oid,
                start: now,
                copies: vec![c],
                kept: 0,
                kept_history: vec![0],
            });
            return true;
        };
        let e = &mut self.events[i];
        let kept = e.copies[e.kept].source;
        let replace = match (self.policy.unwrap(), kept, c.source) {
            (DedupPolicy::PreferPixel, Source::Server, Source::Pixel) => true,
            (DedupPolicy::PreferPixel, Source::Server, Source::Server) => now - e.start <= 60,
            _ => false,
        };
        if replace {
            self.dups.push((e.id.to_owned(), kept.as_str(), "replaced"));
            e.copies.push(c);
            e.kept = e.copies.len() - 1;
            e.kept_history.push(e.kept);
        } else {
            self.dups.push((c.id.to_owned(), c.source.as_str(), rule));
            e.copies.push(c);
        }
        false
    }

    /// The kept row's properties, declaratively: the kept copy's, filled in
    /// by the others in arrival order; on a key an authenticated copy
    /// carries, the authenticated value wins: the one of the authenticated
    /// copy kept last (a later server copy replaces an earlier one under
    /// prefer_pixel), else of the first authenticated copy that carries it.
    fn props(e: &ModelEvent) -> Map<String, Value> {
        let kept = &e.copies[e.kept];
        let mut p = kept.props.clone();
        for (i, c) in e.copies.iter().enumerate() {
            if i != e.kept {
                for (k, v) in &c.props {
                    p.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        let authenticated = |c: &CopySpec| c.source != Source::Pixel;
        for (k, v) in p.iter_mut() {
            let once_kept = e
                .kept_history
                .iter()
                .rev()
                .map(|i| &e.copies[*i])
                .find(|c| authenticated(c) && c.props.contains_key(k));
            let first = || {
                e.copies
                    .iter()
                    .find(|c| authenticated(c) && c.props.contains_key(k))
            };
            if let Some(c) = once_kept.or_else(first) {
                *v = c.props[k].clone();
            }
        }
        p
    }

    fn rows(&self) -> Vec<Value> {
        let mut rows: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                let seen = |s: Source| e.copies.iter().any(|c| c.source == s);
                let props = Self::props(e);
                json!([
                    e.id,
                    e.name,
                    e.copies[e.kept].source.as_str(),
                    seen(Source::Pixel),
                    seen(Source::Server),
                    seen(Source::Import),
                    if props.is_empty() {
                        Value::Null
                    } else {
                        Value::Object(props)
                    }
                ])
            })
            .collect();
        rows.sort_by_key(|r| r.to_string());
        rows
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    app: Option<App>,
}

impl Harness {
    /// A store whose clock starts now, at `micros` past a whole second.
    fn new(policy: DedupPolicy, micros: i64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let now = clock.now_micros();
        clock.set_micros(now - now.rem_euclid(1_000_000) + micros);
        let mut h = Harness {
            dir,
            clock,
            app: None,
        };
        h.open();
        let app = h.app.as_ref().unwrap();
        app.add_site("shop", &["http://localhost:3000".into()])
            .unwrap();
        let mut settings = app.site("shop").unwrap().settings.clone();
        settings.window_secs = WINDOW;
        settings.policy = policy;
        settings.secondary_keys.insert("order".into(), "oid".into());
        app.configure_site("shop", settings, None).unwrap();
        h
    }

    fn open(&mut self) {
        let config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: self.dir.path().to_owned(),
            public_url: "http://127.0.0.1:0".into(),
            public_url_is_default: false,
            trusted_proxies: Vec::new(),
        };
        self.app = Some(App::open(config, self.clock.clone()).unwrap());
    }

    fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown();
        }
        self.open();
    }

    fn send(&self, copies: &[CopySpec], import: bool) -> (u64, u64) {
        let app = self.app.as_ref().unwrap();
        let events = copies
            .iter()
            .map(|c| {
                let json = json!({"event_id": c.id, "event_name": c.name, "source": c.source.as_str(),
                                  "properties": c.props});
                Event::parse(&json.to_string(), Source::Server).unwrap()
            })
            .collect();
        let mode = if import { Mode::Import } else { Mode::Live };
        let site = app.site("shop").unwrap();
        let out = app
            .ingest()
            .unwrap()
            .ingest_blocking(site, events, mode)
            .unwrap();
        (out.accepted, out.deduplicated)
    }

    fn rows(&self) -> Vec<Value> {
        let conn = self.app.as_ref().unwrap().store.connect().unwrap();
        let t = tally::store::sql::run(
            &conn,
            "SELECT event_id, event_name, source, seen_pixel, seen_server, seen_import, properties FROM events",
            false,
        )
        .unwrap();
        let mut rows: Vec<Value> = t
            .rows
            .into_iter()
            .map(|mut r| {
                if let Value::String(text) = &r[6] {
                    r[6] = serde_json::from_str(text).unwrap();
                }
                Value::Array(r)
            })
            .collect();
        rows.sort_by_key(|r| r.to_string());
        rows
    }

    fn dups(&self) -> Vec<(String, String, String)> {
        let conn = self.app.as_ref().unwrap().store.connect().unwrap();
        let t = tally::store::sql::run(
            &conn,
            "SELECT event_id, source, rule FROM duplicates",
            false,
        )
        .unwrap();
        let mut out: Vec<_> = t
            .rows
            .into_iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                    r[2].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

proptest! {
    // 40 cases in the suite (a few seconds); PROPTEST_CASES=2000 for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40),
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_agrees_with_the_model(
        prefer_pixel in any::<bool>(),
        ops in prop::collection::vec(op(), 1..24),
        // Where in its second the clock starts: arrivals near a second's
        // end once lost every change after a restart (a window start
        // rounded up).
        micros in prop_oneof![Just(0i64), Just(999_999), 999_000..1_000_000i64, 0..1_000_000i64],
    ) {
        let policy = if prefer_pixel { DedupPolicy::PreferPixel } else { DedupPolicy::FirstWins };
        let mut h = Harness::new(policy, micros);
        let mut model = Model { policy: Some(policy), ..Model::default() };
        for op in ops {
            match op {
                Op::Advance(secs) => h.clock.advance_secs(secs),
                Op::Restart => h.restart(),
                Op::Send(copies, import) => {
                    let now = tally::domain::Clock::now_secs(&*h.clock);
                    let answer = h.send(&copies, import);
                    let mut expected = (0, 0);
                    for c in copies {
                        if model.apply(c, now, import) { expected.0 += 1 } else { expected.1 += 1 }
                    }
                    prop_assert_eq!(answer, expected, "answer counts");
                }
            }
        }
        prop_assert_eq!(h.rows(), model.rows(), "events");
        let mut dups: Vec<(String, String, String)> = model
            .dups
            .iter()
            .map(|(id, s, r)| (id.clone(), (*s).to_owned(), (*r).to_owned()))
            .collect();
        dups.sort();
        prop_assert_eq!(h.dups(), dups, "duplicates");
    }
}
