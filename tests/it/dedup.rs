//! Deduplication as SPEC §3: key, window, first_wins with merge, accounting.

use crate::helpers::*;
use serde_json::json;

#[test]
fn duplicates_inside_one_batch_count_once() {
    let app = spawn_app();
    let a = app.send(json!([
        event("a", "n"),
        event("a", "n"),
        event("b", "n"),
        event("a", "n")
    ]));
    assert_eq!(
        (a["accepted"].as_u64(), a["deduplicated"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
    assert_eq!(app.count("SELECT count(*) FROM duplicates"), 2);
}

#[test]
fn re_posting_a_batch_changes_no_count() {
    let app = spawn_app();
    let batch = json!([event("a", "n"), event("b", "n"), event("c", "m")]);
    assert_eq!(app.send(batch.clone())["accepted"], 3);
    let again = app.send(batch);
    assert_eq!(
        again,
        json!({"accepted": 0, "deduplicated": 3, "rejected": 0, "errors": []})
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 3);
}

#[test]
fn the_same_id_under_another_name_is_another_event() {
    let app = spawn_app();
    assert_eq!(
        app.send(json!([
            event("ord_1", "order.completed"),
            event("ord_1", "order.refunded")
        ]))["accepted"],
        2
    );
    assert_eq!(
        app.send(json!([event("ORD_1", "order.completed")]))["accepted"],
        1,
        "byte for byte"
    );
}

#[test]
fn a_copy_after_the_window_is_a_new_event_and_opens_a_new_window() {
    let app = spawn_app();
    assert_eq!(app.send(json!([event("a", "n")]))["accepted"], 1);
    app.clock.advance_secs(47 * 3600);
    assert_eq!(
        app.send(json!([event("a", "n")]))["deduplicated"],
        1,
        "inside 48 h"
    );
    app.clock.advance_secs(3600);
    assert_eq!(
        app.send(json!([event("a", "n")]))["accepted"],
        1,
        "48 h after the first arrival"
    );
    app.clock.advance_secs(3600);
    assert_eq!(
        app.send(json!([event("a", "n")]))["deduplicated"],
        1,
        "inside the new window"
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
}

#[test]
fn a_site_window_can_be_shortened() {
    let app = spawn_app();
    app.set(|s| s.window_secs = 600);
    app.send(json!([event("a", "n")]));
    app.clock.advance_secs(599);
    assert_eq!(app.send(json!([event("a", "n")]))["deduplicated"], 1);
    app.clock.advance_secs(1);
    assert_eq!(app.send(json!([event("a", "n")]))["accepted"], 1);
}

#[test]
fn first_wins_keeps_the_first_copy_and_fills_in_missing_properties() {
    let app = spawn_app();
    app.send(
        json!([{"event_id": "o1", "event_name": "order.completed", "source": "server",
                     "properties": {"total": 10, "currency": "EUR"}}]),
    );
    let r = app.pixel(
        json!({"site": app.site_key, "event_id": "o1", "event_name": "order.completed",
               "properties": {"total": 99, "coupon": "XMAS"}}),
        ORIGIN,
    );
    assert_eq!(r.status(), 204);
    let rows = app.query(
        "SELECT source, seen_server, seen_pixel, properties->>'total', properties->>'currency', \
         properties->>'coupon' FROM events",
    );
    assert_eq!(
        rows,
        vec![vec![
            json!("server"),
            json!(true),
            json!(true),
            json!("10"),
            json!("EUR"),
            json!("XMAS")
        ]]
    );
    let dups = app.query("SELECT source, kept_source FROM duplicates");
    assert_eq!(dups, vec![vec![json!("pixel"), json!("server")]]);
}

#[test]
fn merge_false_keeps_the_first_copy_untouched() {
    let app = spawn_app();
    app.set(|s| s.merge_properties = false);
    app.send(json!([{"event_id": "o1", "event_name": "n", "properties": {"a": 1}}]));
    app.send(json!([{"event_id": "o1", "event_name": "n", "properties": {"b": 2}}]));
    assert_eq!(
        app.query("SELECT properties::VARCHAR FROM events")[0][0],
        json!(r#"{"a":1}"#)
    );
}

#[test]
fn merges_inside_one_batch_and_across_batches_agree() {
    let app = spawn_app();
    app.send(json!([
        {"event_id": "x", "event_name": "n", "properties": {"a": 1}},
        {"event_id": "x", "event_name": "n", "properties": {"a": 2, "b": 2}},
    ]));
    app.send(json!([{"event_id": "x", "event_name": "n", "properties": {"c": 3}}]));
    app.send(json!([{"event_id": "x", "event_name": "n", "properties": {"c": 4, "d": 4}}]));
    let props: serde_json::Value = serde_json::from_str(
        app.query("SELECT properties::VARCHAR FROM events")[0][0]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(props, json!({"a": 1, "b": 2, "c": 3, "d": 4}));
}

#[test]
fn prefer_pixel_keeps_the_pixel_copy_and_the_servers_values() {
    let app = spawn_app();
    app.set(|s| s.policy = tally::domain::DedupPolicy::PreferPixel);
    app.send(json!([{"event_id": "o1", "event_name": "order.completed", "properties": {"from": "server", "total": 5}}]));
    app.clock.advance_secs(120);
    let r = app.pixel(
        json!({"site": app.site_key, "event_id": "o1", "event_name": "order.completed",
               "url": "http://localhost:3000/thanks", "properties": {"from": "pixel", "coupon": "X"}}),
        ORIGIN,
    );
    assert_eq!(r.status(), 204);
    // The pixel copy is kept (its url, its source), but on a key both carry
    // the authenticated server's value wins (SPEC §3, trust).
    let rows = app.query("SELECT source, seen_server, seen_pixel, url, properties->>'from', properties->>'total', properties->>'coupon' FROM events");
    assert_eq!(
        rows,
        vec![vec![
            json!("pixel"),
            json!(true),
            json!(true),
            json!("http://localhost:3000/thanks"),
            json!("server"),
            json!("5"),
            json!("X")
        ]]
    );
    assert_eq!(
        app.query("SELECT source, kept_source FROM duplicates"),
        vec![vec![json!("server"), json!("pixel")]]
    );
}

#[test]
fn every_dropped_copy_is_recorded_with_its_source() {
    let app = spawn_app();
    app.send(json!([event("a", "n")]));
    app.send(json!([event("a", "n")]));
    app.pixel(
        json!({"site": app.site_key, "event_id": "a", "event_name": "n"}),
        ORIGIN,
    );
    let rows =
        app.query("SELECT site, event_id, event_name, source FROM duplicates ORDER BY source");
    assert_eq!(
        rows,
        vec![
            vec![json!("shop"), json!("a"), json!("n"), json!("pixel")],
            vec![json!("shop"), json!("a"), json!("n"), json!("server")],
        ]
    );
}

#[test]
fn the_window_survives_a_clean_restart() {
    let app = spawn_app();
    app.send(
        json!([event("a", "n"), {"event_id": "b", "event_name": "n", "properties": {"x": 1}}]),
    );
    let dir = app.stop();
    let app = spawn_app_in(dir);
    let token = app.app.rotate_token("shop").unwrap().1;
    let post = |events: serde_json::Value| -> serde_json::Value {
        app.post_events_raw(json!({"events": events}).to_string(), Some(&token))
            .json()
            .unwrap()
    };
    assert_eq!(post(json!([event("a", "n")]))["deduplicated"], 1);
    // A copy after the restart still fills in properties (the index reads the row).
    assert_eq!(
        post(
            json!([{"event_id": "b", "event_name": "n", "source": "pixel", "properties": {"y": 2}}])
        )["deduplicated"],
        1
    );
    let rows = app.query("SELECT properties->>'x', properties->>'y', seen_server, seen_pixel FROM events WHERE event_id = 'b'");
    assert_eq!(
        rows,
        vec![vec![json!("1"), json!("2"), json!(true), json!(true)]]
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
}

#[test]
fn prefer_pixel_still_replaces_after_a_restart() {
    let app = spawn_app();
    app.set(|s| s.policy = tally::domain::DedupPolicy::PreferPixel);
    app.send(json!([{"event_id": "o1", "event_name": "order.completed", "properties": {"from": "server"}}]));
    let app = spawn_app_in(app.stop());
    let r = app.pixel(
        json!({"site": app.site_key, "event_id": "o1", "event_name": "order.completed",
               "properties": {"from": "pixel", "coupon": "X"}}),
        ORIGIN,
    );
    assert_eq!(r.status(), 204);
    let rows = app.query(
        "SELECT source, seen_server, seen_pixel, properties->>'from', properties->>'coupon' FROM events",
    );
    assert_eq!(
        rows,
        vec![vec![
            json!("pixel"),
            json!(true),
            json!(true),
            json!("server"),
            json!("X")
        ]]
    );
}
