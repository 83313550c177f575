//! `POST /v1/pixel` as SPEC §2.2: origin allowlist, 204s, 400/403/413.

use crate::helpers::*;
use serde_json::{json, Value};

fn body(app: &TestApp, id: &str) -> Value {
    json!({"site": app.site_key, "event_id": id, "event_name": "page.view",
           "url": "http://localhost:3000/", "session_id": "s_1"})
}

#[test]
fn new_and_duplicate_pixel_events_both_answer_204() {
    let app = spawn_app();
    assert_eq!(app.pixel(body(&app, "evt_1"), ORIGIN).status(), 204);
    assert_eq!(app.pixel(body(&app, "evt_1"), ORIGIN).status(), 204);
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE source = 'pixel'"),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM duplicates WHERE source = 'pixel'"),
        1
    );
}

#[test]
fn another_origin_is_403_and_stores_nothing() {
    let app = spawn_app();
    assert_eq!(
        app.pixel(body(&app, "e"), "http://evil.example").status(),
        403
    );
    assert_eq!(
        app.pixel(body(&app, "e"), "http://localhost:3001").status(),
        403
    );
    let res = app
        .client
        .post(format!("{}/v1/pixel", app.base))
        .header("Referer", "http://localhost:3000/checkout")
        .body(body(&app, "via-referer").to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 204, "Referer is used when Origin is missing");
    let res = app
        .client
        .post(format!("{}/v1/pixel", app.base))
        .body(body(&app, "none").to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.count("SELECT count(*) FROM events"), 1);
}

#[test]
fn malformed_bodies_and_unknown_sites_are_400_with_json() {
    let app = spawn_app();
    for bad in [
        json!("not an object"),
        json!({"site": app.site_key, "event_name": "x"}),
        json!({"site": "site_nope", "event_id": "e", "event_name": "x"}),
        json!({"event_id": "e", "event_name": "x"}),
    ] {
        let res = app.pixel(bad.clone(), ORIGIN);
        assert_eq!(res.status(), 400, "{bad}");
        assert!(res.json::<Value>().unwrap()["message"].is_string());
    }
    assert_eq!(app.count("SELECT count(*) FROM events"), 0);
}

#[test]
fn a_body_over_16_kib_is_413() {
    let app = spawn_app();
    let mut b = body(&app, "big");
    b["properties"] = json!({"x": "y".repeat(17_000)});
    assert_eq!(app.pixel(b, ORIGIN).status(), 413);
}

#[test]
fn pixel_rows_get_a_visitor_id_and_never_an_ip() {
    let app = spawn_app();
    app.pixel(body(&app, "v1"), ORIGIN);
    app.pixel(body(&app, "v2"), ORIGIN);
    let rows = app.query("SELECT DISTINCT visitor_id FROM events");
    assert_eq!(rows.len(), 1, "same client, same day, same visitor");
    let id = rows[0][0].as_str().unwrap();
    assert_eq!(id.len(), 16);
    let everything = app.query("SELECT * FROM events");
    assert!(!format!("{everything:?}").contains("127.0.0.1"));
    app.clock.advance_secs(86_400);
    app.pixel(body(&app, "v3"), ORIGIN);
    assert_eq!(
        app.query("SELECT DISTINCT visitor_id FROM events").len(),
        2,
        "ids rotate daily"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM visitor_salts"),
        1,
        "old salts are deleted"
    );
}
