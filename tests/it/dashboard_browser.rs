//! The dashboard in real headless Chromium against a seeded server: login,
//! every card's number, the live feed, user strings shown as text, the
//! owner's view (revenue, conversions, funnel), filters kept in the URL,
//! local days across DST, the inspector, near misses and the payload tester.

use crate::browser::{eventually, Browser};
use crate::dashboard_api::seed_owner_view;
use crate::helpers::*;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const XSS: &str = "<img src=x onerror=alert(1)>";

/// 3 pixel-only page views, 3 server-only events (one named like an XSS
/// probe), 1 order from both sides, and 2 dropped copies.
fn seed(app: &TestApp) {
    for (id, path, referrer) in [
        ("p1", "/a", Some("https://www.google.com/")),
        ("p2", "/a", None),
        ("p3", "/b", None),
    ] {
        let mut body = json!({"site": app.site_key, "event_id": id, "event_name": "page.view",
                              "url": format!("{ORIGIN}{path}")});
        if let Some(r) = referrer {
            body["referrer"] = json!(r);
        }
        assert_eq!(app.pixel(body, ORIGIN).status(), 204);
    }
    let answer = app.send(json!([
        {"event_id": "o1", "event_name": "order.completed", "properties": {"total": 10}},
        {"event_id": "o2", "event_name": "order.completed"},
        {"event_id": "x1", "event_name": XSS},
        {"event_id": "o3", "event_name": "order.completed"},
        {"event_id": "o1", "event_name": "order.completed"},
    ]));
    assert_eq!(
        (answer["accepted"].as_u64(), answer["deduplicated"].as_u64()),
        (Some(4), Some(1))
    );
    let both = json!({"site": app.site_key, "event_id": "o3", "event_name": "order.completed"});
    assert_eq!(app.pixel(both, ORIGIN).status(), 204);
}

/// Opens the dashboard and logs in with [`PASSWORD`].
fn log_in(b: &Browser, app: &TestApp) {
    b.goto(&app.base);
    eventually("the login form", || {
        b.execute("return !document.getElementById('login').hidden", json!([])) == json!(true)
    });
    b.type_into("#password", PASSWORD);
    b.click("#login-form button[type=submit]");
}

#[test]
fn the_dashboard_shows_what_the_seed_implies_and_the_live_feed() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    seed(&app);

    let b = Browser::launch();
    b.goto(&app.base);
    eventually("the login form", || {
        b.execute("return !document.getElementById('login').hidden", json!([])) == json!(true)
    });
    b.type_into("#password", "wrong password");
    b.click("#login-form button[type=submit]");
    eventually("a wrong-password message", || {
        b.text("#login-error").contains("wrong password")
    });
    b.execute("document.getElementById('password').value = ''", json!([]));
    b.type_into("#password", PASSWORD);
    b.click("#login-form button[type=submit]");
    eventually("the cards", || b.text("#card-unique") == "7");

    assert_eq!(b.text("#card-dups"), "2");
    assert_eq!(b.text("#card-rate"), "22.2 %");
    assert_eq!(b.text("#card-pixel"), "57.1 %");
    assert_eq!(b.text("#card-server"), "57.1 %");
    assert_eq!(b.text("#card-both"), "14.3 %");
    let top_events = b.text("#top-events");
    assert!(top_events.starts_with("order.completed 3"), "{top_events}");
    assert!(top_events.contains("page.view 3"));
    assert!(
        top_events.contains(XSS),
        "the probe is shown as text: {top_events}"
    );
    let pages = b.text("#top-pages");
    assert!(pages.starts_with(&format!("{ORIGIN}/a 2")), "{pages}");
    assert!(b
        .text("#top-referrers")
        .contains("https://www.google.com/ 1"));
    assert_eq!(
        b.execute(
            "return document.querySelectorAll('main img').length",
            json!([])
        ),
        json!(0),
        "no user string became an element"
    );
    let bars = b.execute(
        "return document.querySelectorAll('#chart rect').length",
        json!([]),
    );
    assert!(
        bars.as_u64().unwrap() >= 2,
        "the chart has pixel-only, server-only and both bars: {bars}"
    );
    assert!(b.text("#feed").contains(XSS));
    assert!(b.execute("return document.getElementById('empty').hidden", json!([])) == json!(true));

    // A new event arrives in the live feed without reloading; its copy does not.
    eventually("the live stream", || b.text("#live-status") == "connected");
    app.send(json!([{"event_id": "live_1", "event_name": "live.arrival"}]));
    eventually("the live event", || {
        b.text("#feed").starts_with("live.arrival")
    });
    app.send(json!([{"event_id": "live_1", "event_name": "live.arrival"}]));
    app.send(json!([{"event_id": "live_2", "event_name": "live.second"}]));
    eventually("the next live event", || {
        b.text("#feed").starts_with("live.second")
    });
    let arrivals = b.execute(
        "return [...document.querySelectorAll('#feed .name')].filter(n => n.textContent === 'live.arrival').length",
        json!([]),
    );
    assert_eq!(arrivals, json!(1), "a duplicate never appears in the feed");
}

#[test]
fn a_new_site_gets_an_empty_state_with_the_snippet() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the empty state", || {
        b.execute("return !document.getElementById('empty').hidden", json!([])) == json!(true)
    });
    assert!(b.text("#empty-snippet").contains(&app.site_key));
    assert!(b.text("#empty-curl").contains("/v1/events"));
}

/// Runs `script` and returns its result as a string.
fn js(b: &Browser, script: &str) -> String {
    match b.execute(script, json!([])) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The CSV a card's export button downloads, caught before it leaves.
fn csv_of(b: &Browser, card: &str) -> String {
    b.execute(
        "window.__csv = null; \
         URL.createObjectURL = (blob) => { blob.text().then((t) => { window.__csv = t; }); return 'about:blank'; }; \
         HTMLAnchorElement.prototype.click = function () {}; \
         document.querySelector(`button.csv[data-card=\"${arguments[0]}\"]`).click();",
        json!([card]),
    );
    let mut out = String::new();
    eventually("the CSV", || {
        out = js(b, "return window.__csv");
        out != "null"
    });
    out
}

#[test]
fn the_owner_view_shows_exact_revenue_coverage_and_funnel() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    seed_owner_view(&app);
    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the cards", || b.text("#card-unique") == "15");
    eventually("the revenue card", || b.text("#revenue").contains("EUR"));

    let revenue = b.text("#revenue");
    assert!(revenue.contains("EUR 100.40 3 100.20 2"), "{revenue}");
    assert!(revenue.contains("USD 50.05 1 50.05 1"), "{revenue}");
    let conversions = b.text("#conversions");
    assert!(
        conversions.contains("order.completed 4 75.0 % 100.0 % 75.0 %"),
        "{conversions}"
    );
    assert!(
        conversions.contains("signup 2 0.0 % 100.0 % 0.0 %"),
        "{conversions}"
    );
    assert!(!conversions.contains("page.view") && !conversions.contains("cart.add"));
    let trend_days = js(&b, "return document.querySelectorAll('#conversions svg.spark')[0].querySelectorAll('rect').length");
    assert_eq!(trend_days, "7", "one bar per local day of the range");
    eventually("the funnel", || {
        b.text("#funnel").contains("order.completed")
    });
    let funnel = b.text("#funnel");
    assert!(funnel.contains("1. page.view 5"), "{funnel}");
    assert!(funnel.contains("2. cart.add 3 60.0 %"), "{funnel}");
    assert!(funnel.contains("3. order.completed 2 66.7 %"), "{funnel}");
    assert!(b.text("#forwards").contains("No destinations"));

    assert_eq!(
        csv_of(&b, "revenue"),
        "\"currency\",\"revenue\",\"events\",\"over_count_avoided\",\"dropped_copies\"\r\n\
         \"EUR\",\"100.4000\",\"3\",\"100.2000\",\"2\"\r\n\
         \"USD\",\"50.0500\",\"1\",\"50.0500\",\"1\"\r\n"
    );
    let funnel_csv = csv_of(&b, "funnel");
    assert!(
        funnel_csv.contains("\"3\",\"order.completed\",\"2\""),
        "{funnel_csv}"
    );

    // Choosing two steps redraws the funnel and keeps them in the URL.
    b.execute(
        "const s = document.getElementById('step-3'); s.value = ''; s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    eventually("a two-step funnel", || !b.text("#funnel").contains("3."));
    assert!(
        b.url().contains("step=page.view&step=cart.add"),
        "{}",
        b.url()
    );
}

#[test]
fn a_filter_click_updates_every_card_and_the_url_and_reload_restores_it() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    seed_owner_view(&app);
    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the cards", || b.text("#card-unique") == "15");
    eventually("the conversions", || {
        b.text("#conversions").contains("signup")
    });

    b.click("#top-events button[data-value='order.completed']");
    eventually("the filtered cards", || b.text("#card-unique") == "4");
    let filtered = |b: &Browser| {
        assert!(b.url().contains("event=order.completed"), "{}", b.url());
        let chips = b.text("#filter-chips");
        assert!(chips.starts_with("event: order.completed"), "{chips}");
        assert_eq!(b.text("#card-dups"), "4");
        assert_eq!(b.text("#top-events"), "order.completed 4");
        assert_eq!(b.text("#top-pages"), format!("{ORIGIN}/thanks 1"));
        let conversions = b.text("#conversions");
        assert!(
            conversions.contains("order.completed 4") && !conversions.contains("signup"),
            "{conversions}"
        );
        assert!(b.text("#revenue").contains("EUR 100.40 3 100.20 2"));
        let names = js(
            b,
            "return [...document.querySelectorAll('#feed .name')].map((n) => n.textContent).join()",
        );
        assert_eq!(
            names,
            "order.completed,order.completed,order.completed,order.completed"
        );
        let bars = js(b, "return [...document.querySelectorAll('#chart rect title')].map((t) => Number(t.textContent.split(' ').pop())).reduce((a, b) => a + b, 0)");
        assert_eq!(bars, "4", "the chart counts the filtered events");
    };
    eventually("the filtered feed", || {
        b.text("#feed").starts_with("order.completed")
    });
    filtered(&b);

    b.reload();
    eventually("the restored view", || b.text("#card-unique") == "4");
    eventually("the restored feed", || {
        b.text("#feed").starts_with("order.completed")
    });
    filtered(&b);

    // A second filter on top; the back button takes each off again.
    b.click("#filter-pixel");
    eventually("pixel-seen orders", || b.text("#card-unique") == "3");
    assert!(b.url().contains("source=pixel"), "{}", b.url());
    b.back();
    eventually("back to the orders", || b.text("#card-unique") == "4");
    assert!(!b.url().contains("source="), "{}", b.url());
    b.back();
    eventually("back to everything", || b.text("#card-unique") == "15");
    let bar = js(
        &b,
        "return getComputedStyle(document.getElementById('filters')).display",
    );
    assert_eq!(bar, "none", "no filter bar without filters");
}

#[test]
fn a_los_angeles_site_shows_late_evening_on_its_local_day_across_dst() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    let noon = chrono::DateTime::parse_from_rfc3339("2026-11-03T12:00:00-08:00").unwrap();
    app.clock.set_micros(noon.timestamp_micros());
    app.set(|s| s.timezone = chrono_tz::America::Los_Angeles);
    // 23:30 on Sunday 1 November, the 25-hour day the clocks fall back:
    // 07:30 on 2 November in UTC.
    app.send(json!([{"event_id": "late", "event_name": "order.completed",
                     "occurred_at": "2026-11-01T23:30:00-08:00", "properties": {"total": 5}}]));
    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the cards", || b.text("#card-unique") == "1");
    assert_eq!(b.text("#tz"), "Days and hours in America/Los_Angeles");
    let day_of = "return [...document.querySelectorAll('#chart rect title')].map((t) => t.textContent).join('|')";
    assert_eq!(js(&b, day_of), "2026-11-01: server only 1");
    let trend = js(&b, "return [...document.querySelectorAll('#conversions rect')].filter((r) => r.getAttribute('height') > 0).map((r) => r.dataset.day).join()");
    assert_eq!(trend, "2026-11-01");
    assert!(
        b.text("#feed").contains("2026-11-01 23:30:00"),
        "{}",
        b.text("#feed")
    );

    // The local day as a custom range: 25 hourly buckets, the event in the last.
    b.goto(&format!(
        "{}/?site=shop&range=custom&from=2026-11-01&to=2026-11-01",
        app.base
    ));
    eventually("the local day", || b.text("#card-unique") == "1");
    assert_eq!(js(&b, day_of), "2026-11-01T23:00:00-08:00: server only 1");
    assert_eq!(
        b.execute("return document.getElementById('from').value", json!([])),
        json!("2026-11-01")
    );
    b.goto(&format!(
        "{}/?site=shop&range=custom&from=2026-11-02&to=2026-11-02",
        app.base
    ));
    eventually("the next local day", || b.text("#card-unique") == "0");
    // A URL edited by hand into a range the API refuses says why.
    b.goto(&format!("{}/?site=shop&range=1y", app.base));
    eventually("the refusal", || {
        b.text("#view-error")
            .contains("range must be today, 24h, 7d, 30d or custom")
    });
}

#[test]
fn the_inspector_near_misses_forwarding_and_payload_tester_work_from_the_page() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    let hook = tally::control::forward::NewDestination {
        site: "shop".into(),
        target: tally::domain::forward::Target::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret: String::new(),
        },
        events: vec!["order.completed".into()],
        settle_secs: 0,
        rename: Default::default(),
        max_attempts: Some(1),
        max_age_secs: None,
    };
    tally::control::forward::add(&app.app, hook).unwrap();
    app.send(
        json!([{"event_id": "ord_42", "event_name": "order.completed", "properties": {"total": 10}},
                    {"event_id": "ord_7", "event_name": "order.completed"}]),
    );
    let pixel = json!({"site": app.site_key, "event_id": "ord_42", "event_name": "order.completed",
                       "properties": {"coupon": "<b>X</b>"}});
    assert_eq!(app.pixel(pixel, ORIGIN).status(), 204);
    let near = json!({"site": app.site_key, "event_id": "ORD_7 ", "event_name": "order.completed"});
    assert_eq!(app.pixel(near, ORIGIN).status(), 204);
    let parked = || {
        tally::control::forward::list(&app.app, Some("shop")).unwrap()[0]
            .counts
            .parked
    };
    eventually("the unreachable hook to park its events", || parked() == 3);

    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the cards", || b.text("#card-unique") == "3");
    let forwards = b.text("#forwards");
    assert!(
        forwards.contains("webhook · http://127.0.0.1:9/hook 0 0 3"),
        "{forwards}"
    );
    assert_eq!(
        js(
            &b,
            "return document.querySelectorAll('#forwards td.parked').length"
        ),
        "1"
    );
    let near_misses = b.text("#near-misses");
    assert!(near_misses.contains("Case or space: 1"), "{near_misses}");
    assert!(near_misses.contains("ORD_7"), "{near_misses}");

    // From a live-feed row to the inspector.
    b.click("#feed button[title='Inspect ord_42']");
    eventually("the inspected copies", || {
        b.text("#inspect-result").contains("dropped")
    });
    let inspected = b.text("#inspect-result");
    assert!(inspected.contains("kept the server copy"), "{inspected}");
    assert!(
        inspected.contains("same event_id in the window"),
        "{inspected}"
    );
    assert!(
        inspected.contains(r#"{"coupon":"<b>X</b>"}"#),
        "filled-in values are text: {inspected}"
    );
    assert!(b.url().contains("inspect=ord_42"), "{}", b.url());
    assert_eq!(
        js(&b, "return document.querySelectorAll('main b b').length"),
        "0"
    );

    // The search box.
    b.execute(
        "document.getElementById('inspect-id').value = ''",
        json!([]),
    );
    b.type_into("#inspect-id", "nothing_here");
    b.click("#inspect-form button[type=submit]");
    eventually("no copies", || {
        b.text("#inspect-result")
            .contains("No copy of nothing_here")
    });

    // The payload tester decides like live traffic and stores nothing.
    b.execute(
        "document.getElementById('test-payload').value = arguments[0]",
        json!([
            json!([{"event_id": "ord_42", "event_name": "order.completed"},
                      {"event_id": "new_1", "event_name": "signup"},
                      {"event_name": "signup"}])
            .to_string()
        ]),
    );
    b.click("#test-run");
    eventually("the decisions", || {
        b.text("#test-result").contains("rejected")
    });
    let decisions = b.text("#test-result");
    let lines: Vec<&str> = decisions.lines().collect();
    assert!(lines[0].starts_with("duplicate"), "{decisions}");
    assert!(lines[1].starts_with("accepted"), "{decisions}");
    assert!(
        lines[2].starts_with("rejected invalid_event_id"),
        "{decisions}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_id = 'new_1'"),
        0
    );
}

/// Writes `docs/dashboard.png` from a week of varied traffic sent through the
/// real API: sessions that browse, add to cart and order (the server sends
/// every order, the pixel about 70 % of them, some under a mis-cased id),
/// a replayed batch, server-only signups, and a webhook that cannot be
/// reached. Run it by hand: `./scripts/test docs_screenshot -- --ignored`.
#[test]
#[ignore]
fn docs_screenshot() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    let hook = tally::control::forward::NewDestination {
        site: "shop".into(),
        target: tally::domain::forward::Target::Webhook {
            url: "http://127.0.0.1:9/orders".into(),
            secret: String::new(),
        },
        events: vec!["order.completed".into()],
        settle_secs: 0,
        rename: Default::default(),
        max_attempts: Some(1),
        max_age_secs: None,
    };
    tally::control::forward::add(&app.app, hook).unwrap();
    let now = chrono::Utc::now();
    let pages = [
        "/",
        "/pricing",
        "/blog/counting-once",
        "/docs",
        "/shop/boots",
    ];
    let referrers = [
        "https://www.google.com/",
        "https://news.ycombinator.com/",
        "https://duckduckgo.com/",
    ];
    let mut batch: Vec<Value> = Vec::new();
    let mut orders: Vec<Value> = Vec::new();
    for i in 0..1_400u32 {
        let at = |minutes_before: i64| {
            (now - chrono::Duration::minutes(
                i64::from(i) * 7 + i64::from(i % 13) * 3 + minutes_before,
            ))
            .to_rfc3339()
        };
        let session = format!("s_{i}");
        let page = pages[(i % 5) as usize];
        let mut view = json!({"event_id": format!("pv_{i}"), "event_name": "page.view", "source": "pixel",
                              "occurred_at": at(6), "session_id": session, "url": format!("{ORIGIN}{page}")});
        if i % 3 == 0 {
            view["referrer"] = json!(referrers[(i % 9 / 3) as usize]);
        }
        batch.push(view);
        if i % 3 == 0 {
            batch.push(json!({"event_id": format!("cart_{i}"), "event_name": "cart.add", "source": "pixel",
                              "occurred_at": at(3), "session_id": session, "url": format!("{ORIGIN}/cart")}));
        }
        if i % 6 == 0 {
            let (total, currency) = if i % 30 == 0 {
                (format!("{}.50", 40 + i % 70), "USD")
            } else {
                (format!("{}.90", 20 + i % 180), "EUR")
            };
            let order = json!({"event_id": format!("ord_{i}"), "event_name": "order.completed", "source": "server",
                               "occurred_at": at(0), "session_id": session,
                               "properties": {"order_id": i.to_string(), "total": total, "currency": currency}});
            // Ad blockers and closed tabs: the pixel sends about 70 % of orders.
            if i % 10 < 7 {
                let mut pixel = order.clone();
                pixel["source"] = json!("pixel");
                if i % 120 == 0 {
                    pixel["event_id"] = json!(format!("ORD_{i}")); // a near miss
                }
                batch.push(pixel);
            }
            orders.push(order);
        }
        if i % 9 == 0 {
            batch.push(
                json!({"event_id": format!("su_{i}"), "event_name": "signup", "source": "server",
                              "occurred_at": at(1), "session_id": session}),
            );
        }
        if batch.len() >= 500 {
            app.send(json!(batch));
            batch.clear();
        }
    }
    app.send(json!(batch));
    for chunk in orders.chunks(500) {
        app.send(json!(chunk));
    }
    app.send(json!(orders[..60])); // a replayed batch
    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the cards", || b.text("#card-unique") != "–");
    eventually("the funnel", || {
        b.text("#funnel").contains("order.completed")
    });
    let height = b.execute("return document.documentElement.scrollHeight", json!([]));
    b.resize(1280, height.as_u64().unwrap().min(4000) as u32 + 40);
    std::thread::sleep(std::time::Duration::from_millis(800));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::write(path, b.screenshot()).unwrap();
}
