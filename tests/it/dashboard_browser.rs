//! The dashboard in real headless Chromium against a seeded server: login,
//! every card's number, the live feed, and user strings shown as text.

use crate::browser::{eventually, Browser};
use crate::helpers::*;
use serde_json::json;

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

/// Writes `docs/dashboard.png` from a week of varied traffic sent through the
/// real API. Run it by hand: `./scripts/test docs_screenshot -- --ignored`.
#[test]
#[ignore]
fn docs_screenshot() {
    let app = spawn_app();
    app.set_password(PASSWORD);
    let now = chrono::Utc::now();
    let pages = [
        "/",
        "/pricing",
        "/blog/counting-once",
        "/docs",
        "/checkout/thanks",
    ];
    let referrers = [
        "https://www.google.com/",
        "https://news.ycombinator.com/",
        "https://duckduckgo.com/",
    ];
    let mut server = Vec::new();
    for i in 0..1_400u32 {
        let at = now - chrono::Duration::minutes(i64::from(i) * 7 + i64::from(i % 13) * 3);
        let at = at.to_rfc3339();
        let page = pages[(i % 5) as usize];
        let mut view = json!({"site": app.site_key, "event_id": format!("pv_{i}"), "event_name": "page.view",
                              "occurred_at": at, "url": format!("{ORIGIN}{page}")});
        if i % 3 == 0 {
            view["referrer"] = json!(referrers[(i % 9 / 3) as usize]);
        }
        app.pixel(view, ORIGIN);
        if i % 4 == 0 {
            let order = json!({"event_id": format!("ord_{i}"), "event_name": "order.completed", "occurred_at": at,
                               "properties": {"total": i % 300}});
            // Most orders come from both sides; some only from the server (ad blockers).
            if i % 20 != 0 {
                let mut pixel = order.clone();
                pixel["site"] = json!(app.site_key);
                app.pixel(pixel, ORIGIN);
            }
            server.push(order);
        }
        if i % 9 == 0 {
            server.push(
                json!({"event_id": format!("su_{i}"), "event_name": "signup", "occurred_at": at}),
            );
        }
        if server.len() >= 200 {
            app.send(json!(server));
            app.send(json!(server[..50])); // a replayed half batch
            server.clear();
        }
    }
    app.send(json!(server));
    let b = Browser::launch();
    log_in(&b, &app);
    eventually("the cards", || b.text("#card-unique") != "–");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::write(path, b.screenshot()).unwrap();
}
