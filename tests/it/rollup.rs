//! Rollups agree exactly with counting the raw rows: after random pixel,
//! server and import copies (merges, `prefer_pixel` replacements, old
//! backfills), clock jumps across windows, rollup passes, retention, a
//! window that grows and restarts, every card read through the rollups
//! equals the same card read from `events` and `duplicates` alone, for
//! whole-day, unaligned and filtered periods.

use crate::helpers::*;
use duckdb::Connection;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tally::domain::period::Period;
use tally::domain::{Clock, DedupPolicy, Source};
use tally::store::conversions;
use tally::store::rollup::{self, Rules};
use tally::store::stats::{self, Filter, Scope, TopKind};
use tally::store::StoreError;

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

/// Two times in three, one of `items`.
fn maybe<'a>(rng: &mut StdRng, items: &[&'a str]) -> Option<&'a str> {
    (rng.gen_range(0..3) > 0).then(|| pick(rng, items))
}

const NAMES: [&str; 3] = ["page.view", "order.completed", "signup"];
const URLS: [&str; 3] = [
    "http://localhost:3000/",
    "http://localhost:3000/a",
    "http://localhost:3000/b",
];
const REFERRERS: [&str; 2] = ["https://news.example/", "https://search.example/"];

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339()
}

const MINUTE: i64 = 60_000_000;
const DAY: i64 = 86_400_000_000;

/// The unaligned period compared, around `anchor` (the test's start, a
/// whole hour): it starts 5 minutes into a slot and ends 5 minutes short.
fn unaligned(anchor: i64) -> (i64, i64) {
    (anchor - 2 * DAY + 5 * MINUTE, anchor - DAY - 5 * MINUTE)
}

/// A random copy: a name, an id from a small pool (so copies collide), and
/// some of an occurrence time (up to six days back, often in the partial
/// slots at the ends of the unaligned period), a url and a referrer.
fn copy(rng: &mut StdRng, now: i64, anchor: i64) -> Value {
    let mut e = json!({
        "event_name": pick(rng, &NAMES),
        "event_id": format!("e{}", rng.gen_range(0..40)),
    });
    let (from, to) = unaligned(anchor);
    let at = match rng.gen_range(0..4) {
        0 => Some(now - rng.gen_range(0..6 * 86_400) as i64 * 1_000_000),
        1 => Some(from - MINUTE + rng.gen_range(0..12) as i64 * MINUTE),
        2 => Some(to - 7 * MINUTE + rng.gen_range(0..12) as i64 * MINUTE),
        _ => None,
    };
    if let Some(at) = at {
        e["occurred_at"] = json!(rfc3339(at));
    }
    if let Some(u) = maybe(rng, &URLS) {
        e["url"] = json!(u);
    }
    if let Some(r) = maybe(rng, &REFERRERS) {
        e["referrer"] = json!(r);
    }
    if rng.gen_range(0..2) == 0 {
        let amount = format!("{}.{:02}", rng.gen_range(0..500), rng.gen_range(0..100));
        e["properties"] = json!({
            "total": amount.parse::<f64>().unwrap(),
            "value": amount,
            "currency": pick(rng, &["EUR", "usd", " USD "]),
        });
    }
    e
}

/// Every card, read on `c` (in the caller's transaction).
fn cards_on(c: &Connection, scope: &Scope) -> Result<Value, StoreError> {
    Ok(json!({
        "summary": stats::summary(c, scope)?,
        "series": stats::series(c, scope)?,
        "events": stats::top(c, scope, TopKind::Events, 100)?,
        "pages": stats::top(c, scope, TopKind::Pages, 100)?,
        "referrers": stats::top(c, scope, TopKind::Referrers, 100)?,
        "coverage": conversions::coverage(c, scope)?,
        "revenue": conversions::revenue(c, scope)?,
    }))
}

/// Every card, read in one transaction as the dashboard does.
fn cards(app: &TestApp, scope: &Scope) -> Value {
    let conn = app.app.store.connect().unwrap();
    tally::store::transaction(&conn, |c| cards_on(c, scope)).unwrap()
}

/// The scopes compared: whole local days, the last 24 hours, unaligned
/// instants; no filter and each kind of filter.
fn scopes(app: &TestApp, now: i64, anchor: i64) -> Vec<Scope> {
    let site = app.app.site("shop").unwrap();
    let tz = site.settings.timezone;
    let (from, to) = unaligned(anchor);
    let periods = [
        Period::parse(Some("30d"), None, None, now, tz).unwrap(),
        Period::parse(Some("24h"), None, None, now, tz).unwrap(),
        Period::new(from, to, tz),
    ];
    let filters = [
        Filter::default(),
        Filter {
            event: Some("order.completed".into()),
            ..Filter::default()
        },
        Filter {
            page: Some(URLS[1].into()),
            ..Filter::default()
        },
        Filter {
            referrer: Some(REFERRERS[0].into()),
            source: Some(Source::Pixel),
            ..Filter::default()
        },
        Filter {
            source: Some(Source::Server),
            ..Filter::default()
        },
        Filter {
            source: Some(Source::Import),
            ..Filter::default()
        },
    ];
    periods
        .iter()
        .flat_map(|p| {
            filters.iter().map(|f| Scope {
                site: "shop".into(),
                period: *p,
                filter: f.clone(),
                rules: Rules::of(&site.settings),
                now,
            })
        })
        .collect()
}

/// Asserts every card through the rollups equals the card from raw rows (a
/// scope with a window no rollup was built for reads raw rows only). Both
/// are read in one transaction: the server's own upkeep thread (retention
/// at a start, a pass each minute) may change the rows between two.
fn assert_rollups_exact(app: &TestApp, anchor: i64, seed: u64, step: usize) {
    let now = app.clock.now_micros();
    let conn = app.app.store.connect().unwrap();
    let readings = tally::store::transaction(&conn, |c| {
        scopes(app, now, anchor)
            .into_iter()
            .map(|scope| {
                let raw = Scope {
                    rules: Rules {
                        window_secs: u32::MAX,
                        ..scope.rules.clone()
                    },
                    ..scope.clone()
                };
                Ok((cards_on(c, &scope)?, cards_on(c, &raw)?, scope))
            })
            .collect::<Result<Vec<_>, StoreError>>()
    })
    .unwrap();
    for (rolled, raw, scope) in readings {
        assert_eq!(
            rolled, raw,
            "seed {seed}, step {step}: the rollups disagree for {scope:?}"
        );
    }
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut app = spawn_app();
    let token = app.token.clone();
    let anchor = app.clock.now_micros() / 3_600_000_000 * 3_600_000_000;
    app.set(|s| s.window_secs = 3600);
    let mut rolled_up = 0;
    for step in 0..60 {
        let now = app.clock.now_micros();
        match rng.gen_range(0..10) {
            0..=3 => {
                let batch: Vec<Value> = (0..1 + rng.gen_range(0..15))
                    .map(|_| copy(&mut rng, now, anchor))
                    .collect();
                post_events_to(&app.base, &token, batch);
            }
            4..=5 => {
                for _ in 0..1 + rng.gen_range(0..4) {
                    let mut e = copy(&mut rng, now, anchor);
                    e["site"] = json!(app.site_key);
                    assert_eq!(app.pixel(e, ORIGIN).status(), 204);
                }
            }
            6 => {
                let lines: Vec<String> = (0..1 + rng.gen_range(0..8))
                    .map(|_| copy(&mut rng, now, anchor).to_string())
                    .collect();
                let file = app.dir.path().join(format!("import-{step}.ndjson"));
                std::fs::write(&file, lines.join("\n")).unwrap();
                app.import(file, false);
            }
            7 => {
                let policy = if rng.gen_range(0..2) == 0 {
                    DedupPolicy::PreferPixel
                } else {
                    DedupPolicy::FirstWins
                };
                app.set(|s| s.policy = policy);
            }
            8 => {
                tally::upkeep::roll_up(&app.app).unwrap();
                rolled_up += 1;
            }
            _ => app.clock.advance_secs(rng.gen_range(0..3 * 3600) as i64),
        }
        if step == 20 {
            // Another revenue rule: the rollups are counted again under it.
            app.set(|s| s.revenue_property = Some("value".into()));
            tally::upkeep::roll_up(&app.app).unwrap();
            assert_rollups_exact(&app, anchor, seed, step);
        }
        if step == 30 {
            // Retention two days back, then a longer window: the rollups
            // built for the shorter one are dropped and rebuilt.
            app.set(|s| s.retain_days = Some(2));
            tally::retention::run_once(&app.app).unwrap();
            tally::upkeep::roll_up(&app.app).unwrap();
            assert_rollups_exact(&app, anchor, seed, step);
            app.set(|s| s.window_secs = 7200);
            tally::upkeep::roll_up(&app.app).unwrap();
            assert_rollups_exact(&app, anchor, seed, step);
        }
        if step == 40 {
            // A hand-written change: the rollups are counted again.
            tally::control::execute(
                &app.app,
                tally::control::Request::Sql {
                    query: format!(
                        "UPDATE events SET url = '{}' WHERE event_id < 'e2'",
                        URLS[2]
                    ),
                    write: true,
                },
            )
            .unwrap();
            tally::upkeep::roll_up(&app.app).unwrap();
        }
        if step == 50 {
            app.set(|s| s.window_secs = 1800);
        }
        if step == 45 {
            let at = app.clock.now_micros();
            let dir = app.stop();
            app = spawn_app_at(dir, at);
        }
        if step % 10 == 9 {
            assert_rollups_exact(&app, anchor, seed, step);
        }
    }
    app.clock.advance_secs(4 * 3600);
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_rollups_exact(&app, anchor, seed, 60);
    // Not vacuous: the rollups were read, and they count rows.
    let conn = app.app.store.connect().unwrap();
    let rules = Rules::of(&app.app.site("shop").unwrap().settings);
    let now = app.clock.now_micros();
    assert!(rollup::horizon(&conn, "shop", &rules, now).unwrap() > 0);
    assert!(rolled_up > 0);
    assert!(app.count("SELECT count(*) FROM rollup_events") > 0);
    assert!(app.count("SELECT count(*) FROM rollup_pages") > 0);
    assert_eq!(tally::upkeep::check(&app.app).unwrap(), 0, "seed {seed}");
}

#[test]
fn rollups_agree_with_the_raw_rows_after_random_traffic() {
    let seeds: u64 = std::env::var("ROLLUP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for seed in 1..=seeds {
        run(seed);
    }
}

#[test]
fn a_sealed_hour_is_counted_once_and_the_tail_stays_raw() {
    let app = spawn_app();
    app.set(|s| s.window_secs = 3600);
    app.send(json!([event("a", "order.completed"), event("b", "signup")]));
    app.send(json!([event("a", "order.completed")]));
    // Not sealed yet: nothing to count.
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_eq!(app.count("SELECT count(*) FROM rollup_events"), 0);
    app.clock.advance_secs(3 * 3600);
    app.send(json!([event("c", "signup")]));
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_eq!(
        app.count("SELECT sum(n)::BIGINT FROM rollup_events WHERE site = 'shop'"),
        2
    );
    assert_eq!(
        app.count("SELECT sum(n)::BIGINT FROM rollup_dropped WHERE site = 'shop'"),
        1
    );
    // A second pass in the same hour counts nothing again.
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_eq!(
        app.count("SELECT sum(n)::BIGINT FROM rollup_events WHERE site = 'shop'"),
        2
    );
    let now = app.clock.now_micros();
    let scope = &scopes(&app, now, now)[0];
    let summary = &cards(&app, scope)["summary"];
    assert_eq!(summary["unique_events"], 3);
    assert_eq!(summary["duplicates"], 1);
    // `tally sql --write` empties them: they are counted again.
    tally::control::execute(
        &app.app,
        tally::control::Request::Sql {
            query: "DELETE FROM events WHERE event_id = 'b'".into(),
            write: true,
        },
    )
    .unwrap();
    assert_eq!(app.count("SELECT count(*) FROM rollup_state"), 0);
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_eq!(
        app.count("SELECT sum(n)::BIGINT FROM rollup_events WHERE site = 'shop'"),
        1
    );
    assert_eq!(cards(&app, scope)["summary"]["unique_events"], 2);
}

#[test]
fn a_clock_that_steps_back_and_forth_between_passes_is_caught_by_the_check() {
    let app = spawn_app();
    app.set(|s| s.window_secs = 3600);
    app.send(json!([event("a", "signup")]));
    app.clock.advance_secs(4 * 3600);
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_eq!(tally::upkeep::check(&app.app).unwrap(), 0);
    // Back five hours, an event (it arrives before the horizon), forward
    // again before the next pass: no rule sees it, the count does.
    app.clock.advance_secs(-5 * 3600);
    app.send(json!([event("b", "signup")]));
    app.clock.advance_secs(5 * 3600);
    assert_eq!(tally::upkeep::check(&app.app).unwrap(), 1);
    tally::upkeep::roll_up(&app.app).unwrap();
    assert_eq!(tally::upkeep::check(&app.app).unwrap(), 0);
    let now = app.clock.now_micros();
    let scope = &scopes(&app, now, now)[0];
    assert_eq!(cards(&app, scope)["summary"]["unique_events"], 2);
    assert!(app.count("SELECT count(*) FROM rollup_events") > 0);
}
