//! `POST /v1/events` exactly as SPEC §2.3.

use crate::helpers::*;
use serde_json::{json, Value};

#[test]
fn a_batch_is_accepted_and_stored() {
    let app = spawn_app();
    let answer = app.send(json!([
        event("a", "order.completed"),
        event("b", "order.completed")
    ]));
    assert_eq!(
        answer,
        json!({"accepted": 2, "deduplicated": 0, "rejected": 0, "errors": []})
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
}

#[test]
fn one_bad_event_is_rejected_alone_with_its_index() {
    let app = spawn_app();
    let answer = app.send(json!([
        event("a", "signup"),
        {"event_id": "", "event_name": "signup"},
        event("c", "signup"),
        {"event_id": "d", "event_name": "signup", "occurred_at": "last tuesday"},
        {"event_id": "e", "event_name": "signup", "source": "carrier-pigeon"},
        {"event_id": "f", "event_name": "signup", "properties": "not an object"},
        "not an event",
    ]));
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"], 5);
    assert_eq!(answer["deduplicated"], 0);
    let codes: Vec<(u64, String)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            (1, "invalid_event_id".to_owned()),
            (3, "invalid_occurred_at".to_owned()),
            (4, "invalid_source".to_owned()),
            (5, "invalid_properties".to_owned()),
            (6, "invalid_event".to_owned()),
        ]
    );
    assert!(answer["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("event_id"));
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
}

#[test]
fn ids_and_names_over_256_bytes_are_rejected() {
    let app = spawn_app();
    let long = "x".repeat(257);
    let answer = app.send(json!([
        event(&long, "n"),
        event("ok", &long),
        event(&"y".repeat(256), "n")
    ]));
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["errors"][0]["code"], "invalid_event_id");
    assert_eq!(answer["errors"][1]["code"], "invalid_event_name");
}

#[test]
fn a_missing_or_wrong_token_is_401() {
    let app = spawn_app();
    let body = json!({"events": [event("a", "n")]}).to_string();
    assert_eq!(app.post_events_raw(body.clone(), None).status(), 401);
    let res = app.post_events_raw(body, Some("tly_wrong"));
    assert_eq!(res.status(), 401);
    let err: Value = res.json().unwrap();
    assert_eq!(err["error"], "unauthorized");
    assert_eq!(app.count("SELECT count(*) FROM events"), 0);
}

#[test]
fn a_rotated_token_stops_working_at_once() {
    let app = spawn_app();
    let (_, new_token) = app.app.rotate_token("shop").unwrap();
    let body = json!({"events": [event("a", "n")]}).to_string();
    assert_eq!(
        app.post_events_raw(body.clone(), Some(&app.token)).status(),
        401
    );
    assert_eq!(app.post_events_raw(body, Some(&new_token)).status(), 200);
}

#[test]
fn a_body_that_is_not_the_batch_shape_is_400() {
    let app = spawn_app();
    for body in ["not json", "[]", r#"{"events": {}}"#, r#"{"event": []}"#] {
        let res = app.post_events_raw(body.to_owned(), Some(&app.token));
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().unwrap();
        assert_eq!(err["error"], "invalid_body");
        assert!(err["message"].as_str().unwrap().contains("events"));
    }
}

#[test]
fn over_1000_events_or_over_1_mib_is_413_and_stores_nothing() {
    let app = spawn_app();
    let many: Vec<Value> = (0..1001).map(|i| event(&format!("e{i}"), "n")).collect();
    assert_eq!(app.post_events(Value::Array(many)).status(), 413);
    let fat = json!({"blob": "x".repeat(30_000)});
    let big: Vec<Value> = (0..40)
        .map(|i| json!({"event_id": format!("b{i}"), "event_name": "n", "properties": fat}))
        .collect();
    assert_eq!(app.post_events(Value::Array(big)).status(), 413);
    let exactly: Vec<Value> = (0..1000).map(|i| event(&format!("e{i}"), "n")).collect();
    assert_eq!(app.send(Value::Array(exactly))["accepted"], 1000);
    assert_eq!(app.count("SELECT count(*) FROM events"), 1000);
}

#[test]
fn the_daily_quota_answers_429_with_retry_after() {
    let app = spawn_app();
    app.set(|s| s.daily_quota = Some(3));
    assert_eq!(
        app.send(json!([event("a", "n"), event("b", "n"), event("c", "n")]))["accepted"],
        3
    );
    let res = app.post_events(json!([event("d", "n")]));
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 86_400);
    assert_eq!(res.json::<Value>().unwrap()["error"], "quota_exceeded");
    // Test mode answers what live traffic would.
    let test = app
        .client
        .post(format!("{}/v1/events?test=1", app.base))
        .bearer_auth(&app.token)
        .json(&json!({"events": [event("d", "n")]}))
        .send()
        .unwrap();
    assert_eq!(test.status(), 429);
    app.clock.advance_secs(86_400);
    assert_eq!(app.send(json!([event("d", "n")]))["accepted"], 1);
}

#[test]
fn stored_rows_carry_every_field() {
    let app = spawn_app();
    app.send(json!([{
        "event_id": "ord_42", "event_name": "order.completed", "source": "server",
        "occurred_at": "2026-11-23T10:00:00Z", "session_id": "s_1",
        "properties": {"order_id": "42", "total": 199.99}
    }]));
    let rows = app.query(
        "SELECT site, event_id, event_name, source, seen_server, seen_pixel, occurred_at, session_id, \
         properties->>'order_id', (properties->>'total')::DOUBLE FROM events",
    );
    assert_eq!(
        rows[0],
        vec![
            json!("shop"),
            json!("ord_42"),
            json!("order.completed"),
            json!("server"),
            json!(true),
            json!(false),
            json!("2026-11-23 10:00:00"),
            json!("s_1"),
            json!("42"),
            json!(199.99)
        ]
    );
}

#[test]
fn a_store_that_cannot_write_answers_503_and_stores_nothing_of_the_request() {
    let app = spawn_app();
    app.send(json!([event("a", "n")]));
    // Break the store under the writer: the group's append of dropped copies fails.
    let conn = app.app.store.connect().unwrap();
    conn.execute_batch("ALTER TABLE duplicates RENAME TO duplicates_away")
        .unwrap();
    let res = app.post_events(json!([event("b", "n"), event("a", "n")]));
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.json::<Value>().unwrap()["error"], "unavailable");
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(
        app.count("SELECT count(*) FROM events"),
        1,
        "b was rolled back with the rest"
    );
    // Repaired, the sender's retry of the whole request goes in as if new.
    conn.execute_batch("ALTER TABLE duplicates_away RENAME TO duplicates")
        .unwrap();
    let retry = app.send(json!([event("b", "n"), event("a", "n")]));
    assert_eq!(
        (retry["accepted"].as_u64(), retry["deduplicated"].as_u64()),
        (Some(1), Some(1))
    );
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
}
