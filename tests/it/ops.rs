//! `/healthz`, `/metrics`, `/tally.js`, unknown routes.

use crate::helpers::*;
use serde_json::json;

#[test]
fn healthz_is_200_while_the_store_is_writable() {
    let app = spawn_app();
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn metrics_count_events_by_source_and_fate() {
    let app = spawn_app();
    app.send(json!([event("a", "n"), event("a", "n"), {"event_id": ""}]));
    let text = app.metrics();
    assert!(
        text.contains(r#"tally_events_total{source="server",fate="accepted"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"tally_events_total{source="server",fate="deduplicated"} 1"#));
    assert!(text.contains(r#"tally_events_total{source="server",fate="rejected"} 1"#));
    assert!(text.contains("tally_ingest_queue_depth 0"));
    assert!(text.contains("tally_commit_seconds_total"));
}

#[test]
fn the_pixel_script_is_gzipped_cacheable_and_within_budget() {
    let app = spawn_app();
    let client = reqwest::blocking::Client::builder()
        .no_gzip()
        .build()
        .unwrap();
    let res = client
        .get(format!("{}/tally.js", app.base))
        .header("Accept-Encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    assert_eq!(res.headers()["content-encoding"], "gzip");
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let body = res.bytes().unwrap();
    assert!(
        body.len() <= 1_536,
        "served gzipped size {} > 1536",
        body.len()
    );
    let again = client
        .get(format!("{}/tally.js", app.base))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    let br = client
        .get(format!("{}/tally.js", app.base))
        .header("Accept-Encoding", "br, gzip")
        .send()
        .unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");
    assert!(
        br.bytes().unwrap().len() < body.len(),
        "brotli beats gzip here"
    );
    let head = client
        .head(format!("{}/tally.js", app.base))
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/javascript");
    let plain = client.get(format!("{}/tally.js", app.base)).send().unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(plain.text().unwrap().contains("sendBeacon"));
}

#[test]
fn unknown_routes_are_json_404() {
    let app = spawn_app();
    let res = app.client.get(format!("{}/nope", app.base)).send().unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<serde_json::Value>().unwrap()["error"],
        "not_found"
    );
}
