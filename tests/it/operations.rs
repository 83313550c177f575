//! Running Tally for years: backup and restore while serving, a newer
//! schema refused, retention, the systemd unit, request metrics.

use crate::helpers::*;
use serde_json::{json, Value};

#[test]
fn a_backup_taken_while_serving_restores_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let token = site["api_token"].as_str().unwrap().to_owned();
    let server = ServerProcess::start(dir.path());
    let client = reqwest::blocking::Client::new();
    let events: Vec<Value> = (0..500)
        .map(|i| event(&format!("o{i}"), "order.completed"))
        .collect();
    let res = client
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(&token)
        .json(&json!({ "events": events }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let backup = dir.path().join("backup.duckdb");
    let said = tally_ok(dir.path(), &["backup", "--out", backup.to_str().unwrap()]);
    assert!(said.contains("Backed up 500 events"), "{said}");
    let again = tally(dir.path(), &["backup", "--out", backup.to_str().unwrap()]);
    assert!(!again.status.success(), "never overwrites");
    assert!(server.terminate());
    // Restore into a fresh data dir, as the README says.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&backup, restored.path().join("tally.duckdb")).unwrap();
    let server = ServerProcess::start(restored.path());
    let dup = client
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(&token)
        .json(&json!({ "events": [event("o1", "order.completed")] }))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(
        dup["deduplicated"], 1,
        "the token and the window came back too"
    );
    let n = tally_ok(
        restored.path(),
        &[
            "sql",
            "SELECT count(*) AS n FROM events",
            "--format",
            "json",
        ],
    );
    assert_eq!(n, "[{\"n\":500}]\n");
}

#[test]
fn serve_refuses_a_store_from_a_newer_tally() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    tally_ok(
        dir.path(),
        &[
            "sql",
            "INSERT INTO schema_version VALUES (999, now()::TIMESTAMP)",
            "--write",
        ],
    );
    let out = std::process::Command::new(tally_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer") && err.contains("999"), "{err}");
}

#[test]
fn retention_deletes_old_events_once_their_window_has_closed() {
    let app = spawn_app();
    let ten_days_ago = chrono::DateTime::from_timestamp_micros(
        tally::domain::Clock::now_micros(&*app.clock) - 10 * 86_400_000_000,
    )
    .unwrap()
    .to_rfc3339();
    app.send(json!([
        {"event_id": "old", "event_name": "n", "occurred_at": ten_days_ago},
        {"event_id": "new", "event_name": "n"}
    ]));
    app.send(json!([event("old", "n")]));
    tally::control::execute(
        &app.app,
        tally::control::Request::SiteSet {
            site: "shop".into(),
            change: tally::control::SiteChange {
                retain_days: Some(7),
                ..Default::default()
            },
        },
    )
    .unwrap();
    // Inside its window a backfilled old event stays.
    tally::retention::run_once(&app.app).unwrap();
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
    app.clock.advance_secs(49 * 3600);
    let deleted = tally::retention::run_once(&app.app).unwrap();
    assert_eq!((deleted.events, deleted.duplicates), (1, 0));
    assert_eq!(
        app.query("SELECT event_id FROM events"),
        vec![vec![json!("new")]]
    );
    app.clock.advance_secs(8 * 86_400);
    let deleted = tally::retention::run_once(&app.app).unwrap();
    assert_eq!((deleted.events, deleted.duplicates), (1, 1));
    let listed: Value =
        tally::control::execute(&app.app, tally::control::Request::SiteList).unwrap();
    assert_eq!(listed[0]["retain_days"], 7);
}

#[test]
fn metrics_count_requests_by_route_and_status_and_open_connections() {
    let app = spawn_app();
    app.send(json!([event("a", "n")]));
    app.post_events_raw("nope".into(), Some(&app.token));
    app.post_events_raw("{}".into(), Some("wrong"));
    let text = app.metrics();
    for line in [
        r#"tally_http_requests_total{endpoint="events",status="200"} 1"#,
        r#"tally_http_requests_total{endpoint="events",status="400"} 1"#,
        r#"tally_http_requests_total{endpoint="events",status="401"} 1"#,
        "tally_ingest_queue_oldest_seconds",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    let open: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tally_open_connections "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open >= 1);
}

#[test]
fn the_systemd_unit_runs_tally_hardened_with_a_high_file_limit() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/tally.service"
    ))
    .unwrap();
    for line in [
        "ExecStart=/usr/local/bin/tally serve",
        "User=tally",
        "StateDirectory=tally",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
}
