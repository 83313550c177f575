//! The dashboard's JSON API: login, cookies, CSRF, rate limit, numbers.

use crate::helpers::*;
use serde_json::{json, Value};

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
