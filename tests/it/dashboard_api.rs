//! The dashboard's JSON API: login, cookies, CSRF, rate limit, numbers.

use crate::helpers::*;
use serde_json::{json, Value};
use tally::domain::Clock;

fn login(app: &TestApp, password: &str) -> reqwest::blocking::Response {
    app.client
        .post(format!("{}/api/login", app.base))
        .json(&json!({ "password": password }))
        .send()
        .unwrap()
}

#[test]
fn login_sets_a_strict_http_only_cookie_and_the_api_needs_it() {
    let app = spawn_app();
    app.set_password("s3cret-pass");
    let anon = app
        .client
        .get(format!("{}/api/summary?site=shop", app.base))
        .send()
        .unwrap();
    assert_eq!(anon.status(), 401);
    let res = login(&app, "s3cret-pass");
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let csrf = res.json::<Value>().unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = cookie.split(';').next().unwrap().to_owned();
    app.send(json!([
        event("a", "order.completed"),
        event("a", "order.completed")
    ]));
    let get = |path: &str| {
        app.client
            .get(format!("{}{path}", app.base))
            .header("Cookie", &session)
            .send()
            .unwrap()
    };
    let summary: Value = get("/api/summary?site=shop&range=24h").json().unwrap();
    assert_eq!(summary["unique_events"], 1);
    assert_eq!(summary["duplicates_24h"], 1);
    assert_eq!(summary["dedup_rate"], 0.5);
    assert_eq!(summary["server"], 1);
    let series: Value = get("/api/series?site=shop&range=24h").json().unwrap();
    assert_eq!(series["bucket"], "hour");
    let total: u64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["server_only"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1);
    let top: Value = get("/api/top?site=shop&range=30d&kind=events")
        .json()
        .unwrap();
    assert_eq!(top, json!([{"value": "order.completed", "count": 1}]));
    assert_eq!(get("/api/top?site=shop&kind=colours").status(), 400);
    assert_eq!(get("/api/summary?site=nope").status(), 400);
    assert_eq!(
        get("/api/summary?site=shop&range=custom&from=2026-01-02&to=2026-01-01").status(),
        400
    );
    // Logout is state-changing: it needs the CSRF header.
    let no_csrf = app
        .client
        .post(format!("{}/api/logout", app.base))
        .header("Cookie", &session)
        .send()
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    let out = app
        .client
        .post(format!("{}/api/logout", app.base))
        .header("Cookie", &session)
        .header("X-Tally-CSRF", csrf)
        .send()
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(get("/api/summary?site=shop").status(), 401);
}

#[test]
fn wrong_passwords_are_rate_limited() {
    let app = spawn_app();
    app.set_password("s3cret-pass");
    for _ in 0..5 {
        assert_eq!(login(&app, "guess").status(), 401);
    }
    let limited = login(&app, "s3cret-pass");
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
}

#[test]
fn login_refuses_forms_so_no_other_site_can_post_it() {
    let app = spawn_app();
    let res = app
        .client
        .post(format!("{}/api/login", app.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("password=x")
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[test]
fn the_page_forbids_inline_script() {
    let app = spawn_app();
    let res = app.client.get(&app.base).send().unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = res.text().unwrap();
    assert!(!html.contains("<script>"), "no inline script in the page");
}

/// A logged-in API client: the session cookie.
pub struct Session<'a> {
    app: &'a TestApp,
    cookie: String,
}

impl Session<'_> {
    /// Sets a password and logs in with it.
    pub fn open(app: &TestApp) -> Session<'_> {
        app.set_password("s3cret-pass");
        let res = login(app, "s3cret-pass");
        assert_eq!(res.status(), 200);
        let cookie = res.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        Session { app, cookie }
    }

    /// GETs `path`, returning the answer.
    pub fn get_raw(&self, path: &str) -> reqwest::blocking::Response {
        self.app
            .client
            .get(format!("{}{path}", self.app.base))
            .header("Cookie", &self.cookie)
            .send()
            .unwrap()
    }

    /// GETs `path`, asserting 200; returns the JSON.
    pub fn get(&self, path: &str) -> Value {
        let res = self.get_raw(path);
        assert_eq!(res.status(), 200, "{path}");
        res.json().unwrap()
    }
}

/// The clock of [`seed_owner_view`]: noon UTC, a Friday.
pub const SEED_NOW: &str = "2026-11-20T12:00:00Z";

/// RFC 3339 for `minutes` after `base` (µs since the epoch).
fn at(base: i64, minutes: i64) -> String {
    chrono::DateTime::from_timestamp_micros(base + minutes * 60_000_000)
        .unwrap()
        .to_rfc3339()
}

/// A shop's morning, sent through the real API: five sessions browse
/// (`page.view`, `cart.add`, all from the pixel), four orders arrive from
/// the server (three also from the pixel), one is retried, two signups
/// come from the server only. What it implies:
///
/// - revenue: EUR 100.40 over 3 orders (100.10 + 0.1 + 0.2, which floats
///   get wrong), USD 50.05 over 1; over-count avoided: EUR 100.20 over 2
///   dropped copies, USD 50.05 over 1;
/// - coverage: `order.completed` 4 unique, pixel 3, server 4, both 3;
///   `signup` 2 unique, server only;
/// - funnel page.view → cart.add → order.completed: 5 → 3 → 2 sessions;
/// - 15 unique events, 4 dropped copies.
///
/// The clock is set to [`SEED_NOW`] first; the events happen in the ten
/// minutes before it.
pub fn seed_owner_view(app: &TestApp) {
    let now = chrono::DateTime::parse_from_rfc3339(SEED_NOW).unwrap();
    app.clock.set_micros(now.timestamp_micros());
    let t = app.clock.now_micros() - 10 * 60_000_000;
    let pixel = |id: &str, name: &str, session: &str, minute: i64, path: &str, props: Value| {
        let body = json!({"site": app.site_key, "event_id": id, "event_name": name,
                          "session_id": session, "occurred_at": at(t, minute),
                          "url": format!("{ORIGIN}{path}"), "properties": props});
        assert_eq!(app.pixel(body, ORIGIN).status(), 204, "{id}");
    };
    let server = |id: &str, name: &str, session: Option<&str>, minute: i64, props: Value| {
        let mut e = json!({"event_id": id, "event_name": name, "source": "server",
                           "occurred_at": at(t, minute), "properties": props});
        if let Some(s) = session {
            e["session_id"] = json!(s);
        }
        app.send(json!([e]))
    };
    for (id, session, path) in [
        ("p1", "s1", "/a"),
        ("p2", "s2", "/a"),
        ("p3", "s3", "/b"),
        ("p4", "s4", "/b"),
    ] {
        pixel(id, "page.view", session, 0, path, json!({}));
    }
    pixel("p5", "page.view", "s5", 1, "/b", json!({}));
    for id in ["c1", "c2", "c3"] {
        let session = format!("s{}", &id[1..]);
        pixel(id, "cart.add", &session, 1, "/cart", json!({}));
    }
    pixel("c5", "cart.add", "s5", 0, "/cart", json!({})); // before its page view
    pixel(
        "ord_1",
        "order.completed",
        "s1",
        2,
        "/thanks",
        json!({"total": "100.10", "currency": "eur"}),
    );
    let dup = server(
        "ord_1",
        "order.completed",
        Some("s1"),
        2,
        json!({"total": 100.10, "currency": "EUR"}),
    );
    assert_eq!(dup["deduplicated"], 1);
    for _ in 0..2 {
        server(
            "ord_2",
            "order.completed",
            Some("s2"),
            3,
            json!({"value": 50.05, "currency": "usd"}),
        );
    }
    server(
        "ord_3",
        "order.completed",
        Some("s6"),
        4,
        json!({"revenue": "0.1", "total": 999, "currency": "EUR"}),
    );
    pixel(
        "ord_3",
        "order.completed",
        "s6",
        4,
        "/thanks",
        json!({"revenue": "0.1", "total": 999, "currency": "EUR"}),
    );
    server(
        "ord_4",
        "order.completed",
        Some("s6"),
        5,
        json!({"total": 0.2, "currency": "EUR"}),
    );
    pixel("ord_4", "order.completed", "s6", 5, "/thanks", json!({}));
    server("su_1", "signup", None, 6, json!({}));
    server("su_2", "signup", None, 6, json!({}));
}

#[test]
fn revenue_is_exact_per_currency_beside_the_over_count_avoided() {
    let app = spawn_app();
    seed_owner_view(&app);
    let s = Session::open(&app);
    let r = s.get("/api/revenue?site=shop&range=24h");
    assert_eq!(
        r["revenue_properties"],
        json!(["value", "revenue", "total"])
    );
    assert_eq!(
        r["currencies"],
        json!([
            {"currency": "EUR", "revenue": "100.4000", "events": 3,
             "over_count_avoided": "100.2000", "dropped_copies": 2},
            {"currency": "USD", "revenue": "50.0500", "events": 1,
             "over_count_avoided": "50.0500", "dropped_copies": 1},
        ])
    );
    // The card is a plain SUM over the unique events, in exact decimals.
    let plain = app.query(
        "SELECT upper(properties->>'currency') AS c, \
         sum(coalesce(TRY_CAST(properties->>'value' AS DECIMAL(18,4)), \
                      TRY_CAST(properties->>'revenue' AS DECIMAL(18,4)), \
                      TRY_CAST(properties->>'total' AS DECIMAL(18,4))))::VARCHAR AS s \
         FROM events WHERE site = 'shop' AND event_name = 'order.completed' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        plain,
        vec![
            vec![json!("EUR"), r["currencies"][0]["revenue"].clone()],
            vec![json!("USD"), r["currencies"][1]["revenue"].clone()],
        ]
    );
    let dropped = app.query(
        "SELECT currency, sum(revenue)::VARCHAR FROM duplicates WHERE site = 'shop' \
         AND revenue IS NOT NULL GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(dropped[0][1], r["currencies"][0]["over_count_avoided"]);
    assert_eq!(dropped[1][1], r["currencies"][1]["over_count_avoided"]);

    // A site that names its revenue property reads only that one.
    app.set(|s| s.revenue_property = Some("total".into()));
    let r = s.get("/api/revenue?site=shop&range=24h");
    assert_eq!(r["revenue_properties"], json!(["total"]));
    assert_eq!(r["currencies"][0]["revenue"], "1099.3000");
    // Dropped copies keep the revenue read on their arrival, under the rule of then.
    assert_eq!(
        r["currencies"][1],
        json!({"currency": "USD", "revenue": "0.0000", "events": 0,
               "over_count_avoided": "50.0500", "dropped_copies": 1})
    );
}

#[test]
fn coverage_per_conversion_and_the_funnel_count_exactly() {
    let app = spawn_app();
    seed_owner_view(&app);
    let s = Session::open(&app);
    let c = s.get("/api/conversions?site=shop&range=7d");
    assert_eq!(c["timezone"], "UTC");
    let events = c["events"].as_array().unwrap();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["order.completed", "signup"],
        "page views and pixel-only names are left out"
    );
    let order = &events[0];
    assert_eq!(
        [
            &order["unique"],
            &order["pixel"],
            &order["server"],
            &order["both"]
        ],
        [4, 3, 4, 3]
    );
    let days = order["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    let last = days.iter().find(|d| d["day"] == "2026-11-20").unwrap();
    assert_eq!(last["unique"], 4);
    assert_eq!(
        [
            &events[1]["unique"],
            &events[1]["pixel"],
            &events[1]["server"],
            &events[1]["both"]
        ],
        [2, 0, 2, 0]
    );
    let f =
        s.get("/api/funnel?site=shop&range=24h&step=page.view&step=cart.add&step=order.completed");
    assert_eq!(
        f["steps"],
        json!([
            {"event_name": "page.view", "sessions": 5},
            {"event_name": "cart.add", "sessions": 3},
            {"event_name": "order.completed", "sessions": 2},
        ])
    );
    let f = s.get("/api/funnel?site=shop&range=24h&step=cart.add&step=page.view");
    assert_eq!(
        f["steps"][1]["sessions"], 1,
        "only s5 viewed a page after its cart"
    );
}

#[test]
fn filters_narrow_every_card() {
    let app = spawn_app();
    seed_owner_view(&app);
    let s = Session::open(&app);
    let all = s.get("/api/summary?site=shop&range=24h");
    assert_eq!(
        (all["unique_events"].as_u64(), all["duplicates"].as_u64()),
        (Some(15), Some(4))
    );

    let q = "site=shop&range=24h&event=order.completed";
    let summary = s.get(&format!("/api/summary?{q}"));
    assert_eq!(
        (
            summary["unique_events"].as_u64(),
            summary["duplicates"].as_u64()
        ),
        (Some(4), Some(4))
    );
    assert_eq!(
        s.get(&format!("/api/top?{q}&kind=events")),
        json!([{"value": "order.completed", "count": 4}])
    );
    let pages = s.get(&format!("/api/top?{q}&kind=pages"));
    assert_eq!(
        pages,
        json!([{"value": format!("{ORIGIN}/thanks"), "count": 1}]),
        "the pages of the filtered event (a later pixel copy adds no url to a kept server row)"
    );
    assert_eq!(
        s.get(&format!("/api/conversions?{q}"))["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(s
        .get(&format!("/api/recent?{q}"))
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event_name"] == "order.completed"));
    let points = s.get(&format!("/api/series?{q}"))["points"].clone();
    let total: u64 = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["both"].as_u64().unwrap() + p["server_only"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);

    let q = "site=shop&range=24h&source=pixel";
    let summary = s.get(&format!("/api/summary?{q}"));
    assert_eq!(
        (
            summary["unique_events"].as_u64(),
            summary["duplicates"].as_u64()
        ),
        (Some(12), Some(2))
    );
    let r = s.get(&format!("/api/revenue?{q}"));
    assert_eq!(
        r["currencies"],
        json!([{"currency": "EUR", "revenue": "100.4000", "events": 3,
                "over_count_avoided": "0.1000", "dropped_copies": 1}])
    );

    let q = format!("site=shop&range=24h&page={ORIGIN}/a");
    let summary = s.get(&format!("/api/summary?{q}"));
    assert_eq!(summary["unique_events"], 2);
    assert_eq!(
        s.get(&format!("/api/top?{q}&kind=pages")),
        json!([{"value": format!("{ORIGIN}/a"), "count": 2}])
    );
    let q = format!("site=shop&range=24h&page={ORIGIN}/thanks&event=order.completed");
    assert_eq!(
        s.get(&format!("/api/summary?{q}"))["duplicates"],
        1,
        "copies of the orders kept with that page"
    );
}

#[test]
fn a_page_filter_counts_dropped_copies_in_the_period_and_the_last_day() {
    let app = spawn_app();
    let order = |id: &str, page: &str, referrer: Option<&str>| {
        let mut e = event(id, "order.completed");
        e["url"] = json!(format!("{ORIGIN}{page}"));
        if let Some(r) = referrer {
            e["referrer"] = json!(r);
        }
        e
    };
    let hour = 3_600_000_000;
    let start = app.clock.now_micros();
    app.send(json!([
        order("a", "/thanks", None),
        order("c", "/other", None)
    ]));
    app.clock.set_micros(start + hour);
    app.send(json!([
        event("a", "order.completed"),
        event("c", "order.completed")
    ]));
    app.clock.set_micros(start + 72 * hour);
    let b = order("b", "/thanks", Some("https://ref.example/"));
    app.send(json!([b.clone()]));
    app.clock.set_micros(start + 73 * hour);
    app.send(json!([b]));

    let s = Session::open(&app);
    let dropped = |filter: &str| {
        let summary = s.get(&format!("/api/summary?site=shop&range=30d&{filter}"));
        (
            summary["duplicates"].clone(),
            summary["duplicates_24h"].clone(),
        )
    };
    let thanks = format!("page={ORIGIN}/thanks");
    assert_eq!(
        dropped(&thanks),
        (json!(2), json!(1)),
        "a's copy, 3 days old, and b's"
    );
    assert_eq!(
        dropped(&format!("page={ORIGIN}/other")),
        (json!(1), json!(0))
    );
    assert_eq!(
        dropped("referrer=https://ref.example/"),
        (json!(1), json!(1))
    );
    assert_eq!(
        dropped(&format!("{thanks}&source=server")),
        (json!(2), json!(1))
    );
    assert_eq!(
        dropped(""),
        (json!(3), json!(1)),
        "the same counts through the rollup path"
    );
}

#[test]
fn days_and_buckets_follow_the_site_time_zone_across_dst() {
    let app = spawn_app();
    let noon = chrono::DateTime::parse_from_rfc3339("2026-11-03T12:00:00-08:00").unwrap();
    app.clock.set_micros(noon.timestamp_micros());
    app.set(|s| s.timezone = chrono_tz::America::Los_Angeles);
    let mut late = event("late", "order.completed");
    late["occurred_at"] = json!("2026-11-01T23:30:00-08:00"); // 2026-11-02 07:30 UTC
    app.send(json!([late]));
    let s = Session::open(&app);

    let week = s.get("/api/series?site=shop&range=7d");
    assert_eq!(week["bucket"], "day");
    assert_eq!(week["timezone"], "America/Los_Angeles");
    assert_eq!(week["from"], "2026-10-28T00:00:00-07:00");
    assert_eq!(week["to"], "2026-11-04T00:00:00-08:00");
    let days: Vec<(String, u64)> = week["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["t"].as_str().unwrap().to_owned(),
                p["server_only"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(days.len(), 7);
    assert!(days.contains(&("2026-11-01".into(), 1)), "{days:?}");
    assert!(days.contains(&("2026-11-02".into(), 0)), "{days:?}");

    let day = s.get("/api/series?site=shop&range=custom&from=2026-11-01&to=2026-11-01");
    assert_eq!(day["bucket"], "hour");
    let hours = day["points"].as_array().unwrap();
    assert_eq!(hours.len(), 25, "the day the clocks fall back has 25 hours");
    assert_eq!(hours[24]["t"], "2026-11-01T23:00:00-08:00");
    assert_eq!(hours[24]["server_only"], 1);
    let next = s.get("/api/summary?site=shop&range=custom&from=2026-11-02&to=2026-11-02");
    assert_eq!(next["unique_events"], 0, "not on the UTC day");
    let today = s.get("/api/summary?site=shop&range=custom&from=2026-11-01&to=2026-11-01");
    assert_eq!(today["unique_events"], 1);
}

#[test]
fn bad_card_parameters_are_json_400s() {
    let app = spawn_app();
    let s = Session::open(&app);
    for (path, code) in [
        ("/api/summary?site=shop&source=fax", "invalid_source"),
        ("/api/revenue?site=shop&range=1y", "invalid_range"),
        (
            "/api/conversions?site=shop&range=custom&from=2026-01-01",
            "invalid_range",
        ),
        ("/api/funnel?site=shop&step=page.view", "invalid_steps"),
        (
            "/api/funnel?site=shop&step=a&step=b&step=c&step=d",
            "invalid_steps",
        ),
        ("/api/revenue?site=nope", "unknown_site"),
        ("/api/forwards?site=nope", "unknown_site"),
        ("/api/forwards", "invalid_request"),
        ("/api/top?site=shop&limit=many", "invalid_request"),
    ] {
        let res = s.get_raw(path);
        assert_eq!(res.status(), 400, "{path}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].is_string());
    }
    let long = "x".repeat(5000);
    assert_eq!(
        s.get_raw(&format!("/api/summary?site=shop&page={long}"))
            .status(),
        400
    );
}

/// Without a session every data endpoint answers 401 before it reads its
/// query: how a bad or missing parameter is refused is not shown to a
/// caller who is not logged in.
#[test]
fn a_caller_without_a_session_gets_401_whatever_the_parameters() {
    let app = spawn_app();
    app.set_password("s3cret-pass");
    let paths = [
        "/api/summary",
        "/api/series?site=shop&range=1y",
        "/api/top?site=shop&limit=many",
        "/api/recent?limit=x",
        "/api/revenue?site=nope",
        "/api/conversions",
        "/api/funnel?site=shop&step=page.view",
        "/api/events/lookup",
        "/api/near-misses",
        "/api/forwards",
        "/api/live",
        "/api/sites",
    ];
    for path in paths {
        let res = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .unwrap();
        assert_eq!(res.status(), 401, "{path}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["error"], "unauthorized", "{path}: {body}");
    }
}

#[test]
fn forwards_lists_the_site_destinations_with_their_counts() {
    let app = spawn_app();
    let s = Session::open(&app);
    assert_eq!(
        s.get("/api/forwards?site=shop"),
        json!({"destinations": []})
    );
    let new = tally::control::forward::NewDestination {
        site: "shop".into(),
        target: tally::domain::forward::Target::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "s3cret".into(),
        },
        events: vec!["order.completed".into()],
        settle_secs: 0,
        rename: Default::default(),
        max_attempts: None,
        max_age_secs: None,
    };
    tally::control::forward::add(&app.app, new).unwrap();
    let listed = s.get("/api/forwards?site=shop");
    let d = &listed["destinations"][0];
    assert_eq!(d["kind"], "webhook");
    assert_eq!(d["target"], "http://127.0.0.1:9/hook");
    assert_eq!(
        (
            d["delivered"].as_u64(),
            d["pending"].as_u64(),
            d["parked"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert!(
        !listed.to_string().contains("s3cret"),
        "secrets never leave"
    );
    assert_eq!(
        s.get_raw("/api/forwards?site=shop").headers()["content-type"],
        "application/json"
    );
}
