//! The pixel in real headless Chromium: the pixel + server combo end to end.

use crate::browser::{eventually, Browser, PageServer};
use crate::helpers::*;
use crate::proxy::{Action, Plan, Proxy, Reply};
use serde_json::json;

/// Makes `origin` the only allowed origin of `site`.
fn allow(app: &TestApp, site: &str, origin: &str) {
    let settings = app.app.site(site).unwrap().settings.clone();
    app.app
        .configure_site(site, settings, Some(&[origin.to_owned()]))
        .unwrap();
}

fn page(tally_base: &str, site_key: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>Thanks</title>
<script>window.tally=window.tally||{{q:[],track:function(){{this.q.push(arguments)}}}}</script>
<script defer src="{tally_base}/tally.js" data-site="{site_key}"></script>
<script>tally.track('checkout.viewed', {{step: 3}})</script>
</head><body><h1>Thank you</h1></body></html>"#
    )
}

#[test]
fn the_pixel_and_the_server_count_one_order_once() {
    let app = spawn_app();
    // The customer's site is served from its own origin.
    let site = app
        .app
        .add_site("web", &["https://placeholder.example".to_owned()])
        .unwrap();
    let pages = PageServer::start(page(&app.base, &site.site_key));
    allow(&app, "web", &pages.origin);
    let count = |sql: &str| app.count(sql);

    let browser = Browser::launch();
    browser.goto(&format!("{}/checkout/thanks", pages.origin));
    eventually("one automatic page view", || {
        count("SELECT count(*) FROM events WHERE site = 'web' AND event_name = 'page.view'") == 1
    });
    eventually("the call queued before the script loaded", || {
        count("SELECT count(*) FROM events WHERE event_name = 'checkout.viewed' AND properties->>'step' = '3'") == 1
    });
    let row = app.query("SELECT source, url, session_id IS NOT NULL, visitor_id IS NOT NULL, event_id FROM events WHERE event_name = 'page.view'");
    assert_eq!(row[0][0], json!("pixel"));
    assert_eq!(
        row[0][1],
        json!(format!("{}/checkout/thanks", pages.origin))
    );
    assert_eq!(
        (row[0][2].clone(), row[0][3].clone()),
        (json!(true), json!(true))
    );
    assert!(row[0][4].as_str().unwrap().starts_with("evt_"));

    browser.execute(
        "tally.track('order.completed', {event_id: 'ord_42', order_id: '42', total: 199.99})",
        json!([]),
    );
    eventually("the order with its own event_id", || {
        count("SELECT count(*) FROM events WHERE event_id = 'ord_42' AND event_name = 'order.completed'") == 1
    });
    assert_eq!(
        app.query("SELECT properties->>'event_id', properties->>'order_id' FROM events WHERE event_id = 'ord_42'"),
        vec![vec![json!(null), json!("42")]],
        "the override is not kept among the properties"
    );

    browser.execute("history.pushState({}, '', '/account')", json!([]));
    eventually("a second page view after pushState", || {
        count("SELECT count(*) FROM events WHERE event_name = 'page.view' AND url LIKE '%/account'")
            == 1
    });

    // The order webhook fires the same order from the server.
    let (_, token) = app.app.rotate_token("web").unwrap();
    let res: serde_json::Value = app
        .client
        .post(format!("{}/v1/events", app.base))
        .bearer_auth(&token)
        .json(&json!({"events": [{"event_id": "ord_42", "event_name": "order.completed", "source": "server",
                                  "properties": {"order_id": "42", "total": 199.99, "email_hash": "ab12"}}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(res["deduplicated"], 1);
    assert_eq!(res["accepted"], 0);
    let merged = app.query("SELECT source, seen_pixel, seen_server, properties->>'email_hash' FROM events WHERE event_id = 'ord_42'");
    assert_eq!(
        merged,
        vec![vec![
            json!("pixel"),
            json!(true),
            json!(true),
            json!("ab12")
        ]]
    );
    assert_eq!(count("SELECT count(*) FROM events WHERE site = 'web'"), 4);

    // The same page on an origin the site does not allow stores nothing.
    browser.goto(&format!("{}/checkout/thanks", pages.other_origin));
    browser.execute(
        "tally.track('order.completed', {event_id: 'ord_43'})",
        json!([]),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(count("SELECT count(*) FROM events WHERE site = 'web'"), 4);
    assert_eq!(
        count("SELECT count(*) FROM events WHERE event_id = 'ord_43'"),
        0
    );
}

/// A page on its own origin (allowed for `shop`) that loads `tally.js` from
/// `tally_base` with automatic page views off, open in a new browser once
/// the script has loaded.
fn manual_page(app: &TestApp, tally_base: &str) -> (PageServer, Browser) {
    let key = &app.site_key;
    let html = format!(
        r#"<!doctype html><html><head><script defer src="{tally_base}/tally.js" data-site="{key}" data-auto="false"></script></head><body>x</body></html>"#
    );
    let pages = PageServer::start(html);
    allow(app, "shop", &pages.origin);
    let browser = Browser::launch();
    browser.goto(&pages.origin);
    eventually("the script to load", || {
        browser.execute("return typeof tally", json!([])) == json!("object")
    });
    (pages, browser)
}

#[test]
fn data_auto_false_turns_page_views_off() {
    let app = spawn_app();
    let (_pages, browser) = manual_page(&app, &app.base);
    browser.execute("tally.track('signup', {plan: 'free'})", json!([]));
    eventually("the manual event", || {
        app.count("SELECT count(*) FROM events WHERE event_name = 'signup'") == 1
    });
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_name = 'page.view'"),
        0
    );
}

/// `reply` as the browser can read it: with the CORS header the server's
/// own pixel answers carry, so `tally.js` sees the status, not a network
/// error.
fn readable(mut reply: Reply) -> Reply {
    reply
        .headers
        .push(("Access-Control-Allow-Origin".into(), "*".into()));
    reply
}

#[test]
fn a_503_is_retried_with_the_same_event_id_and_counted_once_and_a_400_is_not_retried() {
    let app = spawn_app();
    // The first `order.completed` reaches the server, which commits it, but
    // the browser gets a 503 (a proxy restarting in front of Tally); every
    // `bad.request` gets a 400 without reaching the server.
    let mut orders = 0;
    let proxy = Proxy::start(
        &app.base,
        Plan::new(move |req| {
            let name = req
                .json()
                .and_then(|b| b["event_name"].as_str().map(str::to_owned));
            match name.as_deref() {
                Some("order.completed") if req.path() == "/v1/pixel" => {
                    orders += 1;
                    if orders == 1 {
                        Action::ForwardThenAnswer(readable(Reply::unavailable()))
                    } else {
                        Action::Forward
                    }
                }
                Some("bad.request") => Action::Answer(readable(Reply {
                    status: 400,
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: br#"{"error":"bad_request"}"#.to_vec(),
                })),
                _ => Action::Forward,
            }
        }),
    );
    let (_pages, browser) = manual_page(&app, &proxy.base);
    browser.execute(
        "tally.track('bad.request', {}); tally.track('order.completed', {order_id: '42'})",
        json!([]),
    );

    let pixel_requests = |name: &str| -> Vec<serde_json::Value> {
        proxy
            .exchanges()
            .into_iter()
            .filter(|e| e.request.path() == "/v1/pixel")
            .filter_map(|e| e.request.json())
            .filter(|b| b["event_name"] == name)
            .collect()
    };
    eventually("the retry of the order after its 503", || {
        pixel_requests("order.completed").len() == 2
    });
    let sent = pixel_requests("order.completed");
    assert_eq!(
        sent[0], sent[1],
        "the retry re-sends the same body, so the same event_id"
    );
    eventually("the retry to be counted as a duplicate", || {
        app.count("SELECT count(*) FROM duplicates") == 1
    });
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_name = 'order.completed'"),
        1
    );
    // A retry of the 400 would have come 1 s after it, beside the order's.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(pixel_requests("bad.request").len(), 1, "a 400 is final");
    assert_eq!(pixel_requests("order.completed").len(), 2);
}
