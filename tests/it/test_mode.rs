//! Test mode (SPEC §5): the same validation, hashing and decision as live
//! traffic, answered per event, and nothing stored, no window opened, no
//! counter moved. Also the near-miss report and personal data at rest.

use crate::helpers::*;
use crate::session;
use serde_json::{json, Value};

/// Everything test mode must leave alone: row counts and the event counters.
fn footprint(app: &TestApp) -> (i64, i64, Vec<String>) {
    let metrics = app.metrics();
    (
        app.count("SELECT count(*) FROM events"),
        app.count("SELECT count(*) FROM duplicates"),
        metrics
            .lines()
            .filter(|l| l.starts_with("tally_events_total"))
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn test_mode_answers_what_live_would_and_changes_nothing() {
    let app = spawn_app();
    app.set(|s| {
        s.secondary_keys
            .insert("order.completed".into(), "order_id".into());
    });
    app.send(json!([{"event_id": "ord_1", "event_name": "order.completed", "properties": {"order_id": 1}}]));
    let batch = json!({"events": [
        {"event_id": "ord_1", "event_name": "order.completed"},
        {"event_id": "evt_x", "event_name": "order.completed", "properties": {"order_id": "1", "coupon": "Z"}},
        {"event_id": "new_1", "event_name": "order.completed", "user_data": {"email": " Jane@Example.COM "}},
        {"event_id": "", "event_name": "order.completed"}
    ]});
    let before = footprint(&app);
    let res = app
        .client
        .post(format!("{}/v1/events?test=1", app.base))
        .bearer_auth(&app.token)
        .json(&batch)
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let test: Value = res.json().unwrap();
    assert_eq!(
        footprint(&app),
        before,
        "test mode stored or counted something"
    );
    assert_eq!(
        (&test["accepted"], &test["deduplicated"], &test["rejected"]),
        (&json!(1), &json!(2), &json!(1))
    );
    let per_event = test["test"].as_array().unwrap();
    assert_eq!(per_event[0]["rule"], "same_key");
    assert_eq!(per_event[1]["rule"], "secondary_key");
    assert_eq!(per_event[1]["matched_key"], "order_id");
    assert_eq!(per_event[1]["filled"], json!({"coupon": "Z"}));
    assert_eq!(per_event[2]["outcome"], "accepted");
    assert_eq!(per_event[3]["outcome"], "rejected");
    assert_eq!(per_event[3]["code"], "invalid_event_id");
    // No window was opened: the live copy of new_1 is new, and the live
    // answer is what test mode said.
    let live = app.post_events_raw(batch.to_string(), Some(&app.token));
    let live: Value = live.json().unwrap();
    assert_eq!(
        (&live["accepted"], &live["deduplicated"], &live["rejected"]),
        (&json!(1), &json!(2), &json!(1))
    );
    // The hashed user data test mode showed is what was stored.
    let stored = app.query("SELECT user_data->>'em' FROM events WHERE event_id = 'new_1'");
    assert_eq!(
        stored[0][0],
        json!(tally::domain::personal::hash_email("jane@example.com"))
    );
    assert_eq!(per_event[2]["user_data"]["em"], stored[0][0]);
    assert!(per_event[0].get("user_data").is_none(), "none was sent");
}

#[test]
fn pixel_and_payload_tester_and_import_dry_run_store_nothing() {
    let app = spawn_app();
    let before = footprint(&app);
    let res = app
        .client
        .post(format!("{}/v1/pixel?test=1", app.base))
        .header("Origin", ORIGIN)
        .body(
            json!({"site": app.site_key, "event_id": "p1", "event_name": "page.view"}).to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().unwrap()["test"][0]["outcome"],
        "accepted"
    );
    let session = session::login(&app);
    let tested: Value = session
        .post(
            &app,
            "/api/test",
            &json!({"site": "shop", "events": [event("t1", "n"), event("t1", "n"), {"event_id": 3}]}),
        )
        .json()
        .unwrap();
    assert_eq!(
        (
            &tested["accepted"],
            &tested["deduplicated"],
            &tested["rejected"]
        ),
        (&json!(1), &json!(1), &json!(1))
    );
    let file = app.dir.path().join("dry.ndjson");
    std::fs::write(
        &file,
        "{\"event_id\":\"d1\",\"event_name\":\"n\"}\n{\"event_id\":\"d1\",\"event_name\":\"n\"}\n",
    )
    .unwrap();
    let dry = app.import(file, true);
    assert_eq!(
        (&dry["accepted"], &dry["deduplicated"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(footprint(&app), before);
    // Without the CSRF header the tester is refused.
    let no_csrf = app
        .client
        .post(format!("{}/api/test", app.base))
        .header("Cookie", &session.cookie)
        .json(&json!({"site": "shop", "events": []}))
        .send()
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
}

#[test]
fn planted_near_misses_are_all_found_among_100000_clean_events_and_nothing_else() {
    let app = spawn_app();
    let mut batch = Vec::new();
    let flush = |batch: &mut Vec<Value>| {
        if !batch.is_empty() {
            app.send(Value::Array(std::mem::take(batch)));
        }
    };
    for i in 0..100_000u32 {
        // Clean traffic: orders sent by both sides under one id, pixel page
        // views with random ids, server-only signups.
        let e = match i % 4 {
            0 => {
                json!({"event_id": format!("ord_{i}"), "event_name": "order.completed", "source": "pixel"})
            }
            1 => {
                json!({"event_id": format!("evt_{:x}", i.wrapping_mul(2_654_435_761)), "event_name": "page.view", "source": "pixel"})
            }
            2 => {
                json!({"event_id": format!("usr_{i}"), "event_name": "signup", "source": "server"})
            }
            _ => {
                json!({"event_id": format!("ord_{}", i - 3), "event_name": "order.completed", "source": "server"})
            }
        };
        batch.push(e);
        if batch.len() == 1_000 {
            flush(&mut batch);
        }
    }
    let planted = [
        ("pixel", "order.completed", "ord_900001"),
        ("server", "order.completed", "ORD_900001 "),
        ("pixel", "order.completed", "900002"),
        ("server", "order.completed", "ord_900002"),
        ("pixel", "order.completed", "900003"),
        ("server", "order.completed", "900003-1"),
        ("pixel", "Purchase", "o-900004"),
        ("server", "purchase", "o-900004"),
        ("pixel", "order_completed", "x900005"),
        ("server", "order.completed", "x900005"),
    ];
    for (source, name, id) in planted {
        batch.push(json!({"event_id": id, "event_name": name, "source": source}));
    }
    flush(&mut batch);
    let report: Value = serde_json::from_value(
        tally::control::execute(
            &app.app,
            tally::control::Request::NearMisses {
                site: "shop".into(),
            },
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(report["events_checked"], 75_000 + 10);
    let counts: Vec<(String, u64)> = report["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kind"].as_str().unwrap().to_owned(),
                k["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("case_or_space".to_owned(), 1),
            ("prefix_or_suffix".to_owned(), 2),
            ("event_name".to_owned(), 2)
        ],
        "{report:#}"
    );
    let session = session::login(&app);
    let via_api: Value = session
        .get(&app, "/api/near-misses?site=shop")
        .json()
        .unwrap();
    assert_eq!(via_api, report);
}

#[test]
fn clear_text_personal_data_never_reaches_the_file_the_wal_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let token = site["api_token"].as_str().unwrap().to_owned();
    let server = ServerProcess::start_logging(dir.path(), Some("debug"));
    let email = "Jane.Doe.Secret@Example.COM";
    let phone = "+1 (555) 867-5309";
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(&token)
        .json(&json!({"events": [
            {"event_id": "o1", "event_name": "order.completed",
             "user_data": {"email": email, "phone": phone, "client_ip_address": "203.0.113.77"},
             "properties": {"email": email, "phone": phone}},
            {"event_id": "o2", "event_name": "order.completed", "user_data": {"em": email, "street": email}}
        ]}))
        .send()
        .unwrap();
    let answer: Value = res.json().unwrap();
    assert_eq!(
        (&answer["accepted"], &answer["rejected"]),
        (&json!(1), &json!(1))
    );
    let wal = std::fs::read(dir.path().join("tally.duckdb.wal")).unwrap_or_default();
    let file = std::fs::read(dir.path().join("tally.duckdb")).unwrap();
    let log = server.terminate_and_log();
    let needles = [
        email.to_owned(),
        email.to_lowercase(),
        "867-5309".to_owned(),
        "15558675309".to_owned(),
        "203.0.113.77".to_owned(),
    ];
    for needle in &needles {
        let find = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!find(&wal), "{needle} in the WAL");
        assert!(!find(&file), "{needle} in the file");
        assert!(!log.contains(needle.as_str()), "{needle} in the log");
    }
    let stored = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT user_data->>'em' AS em, properties->>'email' AS p FROM events",
            "--format",
            "json",
        ],
    );
    let hashed = tally::domain::personal::hash_email(email);
    assert!(stored.contains(&hashed), "{stored}");
}
