//! The drop-in endpoints (SPEC §2.4) driven by the official clients,
//! unmodified: segment-analytics-python, rudder-sdk-python,
//! @segment/analytics-node, @rudderstack/rudder-sdk-node and
//! facebook-business, each pointed at the real server by its host setting
//! alone (the drivers in `tests/sdk/`). What a user of each SDK relies on:
//! every message lands once however often it is sent, the ids land in
//! `user_id` / `anonymous_id`, personal data is stored hashed only, and a
//! 503 after the commit makes the SDK retry into a duplicate, not a second
//! event. Then the limits, by hand: gzip bombs and oversized batches are
//! 413 with the server's memory flat, wrong keys 401, bodies of the wrong
//! shape 400, and none of them stores anything.
//!
//! The clients live in `$CARGO_TARGET_DIR/sdk` (default
//! `~/.cache/tally/target/sdk`). `scripts/test` installs them; a test that
//! finds them missing runs `tests/sdk/install.sh` itself (idempotent and
//! locked), so these tests never skip.

use crate::helpers::*;
use crate::proxy::{Exchange, Plan, Proxy, Request};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

// ---------------------------------------------------------------------------
// The clients

/// One official client and its driver script.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sdk {
    SegmentPython,
    RudderPython,
    SegmentNode,
    RudderNode,
    MetaPython,
}

/// What a driver reported: its exit status, its one JSON line, its stderr.
struct Run {
    ok: bool,
    report: Value,
    stderr: String,
}

impl Sdk {
    fn script(self) -> &'static str {
        match self {
            Sdk::SegmentPython => "segment_python.py",
            Sdk::RudderPython => "rudder_python.py",
            Sdk::SegmentNode => "segment_node.js",
            Sdk::RudderNode => "rudder_node.js",
            Sdk::MetaPython => "meta_python.py",
        }
    }

    /// Whether the client gzips its bodies as configured by its driver
    /// (`@segment/analytics-node` has no gzip option).
    fn gzips(self) -> bool {
        matches!(
            self,
            Sdk::SegmentPython | Sdk::RudderPython | Sdk::RudderNode
        )
    }

    /// Sends `input` (the driver's stdin) through the client to `base`.
    fn run(
        self,
        base: &str,
        key: &str,
        site_key: &str,
        input: &Value,
        env: &[(&str, &str)],
    ) -> Run {
        let dir = clients();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sdk")
            .join(self.script());
        let mut command = if self.script().ends_with(".py") {
            Command::new(dir.join("venv/bin/python"))
        } else {
            let mut node = Command::new("node");
            node.env("NODE_PATH", dir.join("node/node_modules"));
            node
        };
        command
            .arg(script)
            .args([base, key, site_key])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the SDK driver");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(output) => output.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!("{self:?} did not finish within 120 s");
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        Run {
            ok: output.status.success(),
            report: stdout
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The install dir of the clients, installed first if they are not.
fn clients() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").expect("HOME or CARGO_TARGET_DIR is set");
                PathBuf::from(home).join(".cache/tally/target")
            });
        let dir = target.join("sdk");
        // Idempotent and quick once installed (it compares two pin files),
        // so it runs once per test process rather than trusting a marker.
        let out = Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/install.sh"))
            .arg(&dir)
            .output()
            .expect("run tests/sdk/install.sh");
        assert!(
            out.status.success(),
            "tests/sdk/install.sh {} failed (it needs python3 with venv, node >= 20 with npm, \
             and PyPI and npm registry access):\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

// ---------------------------------------------------------------------------
// Segment / RudderStack: every message once, ids kept, personal data hashed

/// Every message type once, the first `track` twice in the same batch (an
/// SDK-side duplicate), with personal data in properties and traits.
fn messages() -> Value {
    json!([
        {"type": "track", "event": "order.completed", "messageId": "m1", "userId": "u1",
         "timestamp": "2026-11-20T10:00:00Z",
         "properties": {"order_id": "42", "total": 19.99, "email": "Jane.Doe@Example.com"}},
        {"type": "page", "name": "Home", "messageId": "m2", "anonymousId": "a1",
         "url": "https://shop.example.com/", "referrer": "https://google.com/"},
        {"type": "identify", "messageId": "m3", "userId": "u1", "anonymousId": "a1",
         "traits": {"email": " Jane.Doe@Example.com", "phone": "+1 (555) 010-9999", "plan": "pro"}},
        {"type": "screen", "name": "Cart", "messageId": "m4", "userId": "u1"},
        {"type": "group", "groupId": "g1", "messageId": "m5", "userId": "u1",
         "traits": {"name": "Acme"}},
        {"type": "alias", "previousId": "a1", "userId": "u1", "messageId": "m6"},
        {"type": "track", "event": "order.completed", "messageId": "m1", "userId": "u1",
         "properties": {"order_id": "42"}}
    ])
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Sends [`messages`] through `sdk` twice (a replay) and checks the store.
fn every_message_lands_once(sdk: Sdk) {
    let app = spawn_app();
    for attempt in ["first", "replay"] {
        let run = sdk.run(&app.base, &app.token, &app.site_key, &messages(), &[]);
        assert!(run.ok, "{sdk:?} {attempt}: {} {}", run.report, run.stderr);
    }
    let rows = app.query(
        "SELECT event_id, event_name, source, user_id, anonymous_id, url, referrer
         FROM events ORDER BY event_id",
    );
    assert_eq!(
        json!(rows),
        json!([
            ["m1", "order.completed", "server", "u1", null, null, null],
            [
                "m2",
                "page.view",
                "server",
                null,
                "a1",
                "https://shop.example.com/",
                "https://google.com/"
            ],
            ["m3", "identify", "server", "u1", "a1", null, null],
            ["m4", "screen.view", "server", "u1", null, null, null],
            ["m5", "group", "server", "u1", null, null, null],
            ["m6", "alias", "server", "u1", null, null, null],
        ]),
        "{sdk:?}"
    );
    // m1 again in the first run, all 7 in the replay: each copy recorded, none kept.
    assert_eq!(app.count("SELECT count(*) FROM duplicates"), 8, "{sdk:?}");
    assert_eq!(
        app.query("SELECT CAST(occurred_at AS VARCHAR) FROM events WHERE event_id = 'm1'"),
        [[json!("2026-11-20 10:00:00")]],
        "{sdk:?}: timestamp is occurred_at"
    );
    // What a page, screen, group or alias message is about is kept.
    let props = |id: &str| -> Value {
        let rows = app.query(&format!(
            "SELECT CAST(properties AS VARCHAR) FROM events WHERE event_id = '{id}'"
        ));
        serde_json::from_str(rows[0][0].as_str().unwrap()).unwrap()
    };
    assert_eq!(props("m2")["name"], "Home", "{sdk:?}");
    assert_eq!(props("m4")["name"], "Cart", "{sdk:?}");
    assert_eq!(props("m5")["groupId"], "g1", "{sdk:?}");
    assert_eq!(props("m5")["name"], "Acme", "{sdk:?}");
    assert_eq!(props("m6")["previousId"], "a1", "{sdk:?}");
    // Personal data: hashed Meta's way (trimmed, lower-cased; digits only).
    let email = sha256("jane.doe@example.com");
    assert_eq!(props("m1")["email"], email.as_str(), "{sdk:?}");
    assert_eq!(props("m3")["email"], email.as_str(), "{sdk:?}");
    assert_eq!(
        props("m3")["phone"],
        sha256("15550109999").as_str(),
        "{sdk:?}"
    );
    assert_eq!(props("m3")["plan"], "pro", "{sdk:?}");
    let everything = format!(
        "{:?} {:?}",
        app.query("SELECT * FROM events"),
        app.query("SELECT * FROM duplicates")
    )
    .to_lowercase();
    for clear in ["jane.doe", "(555)", "15550109999"] {
        assert!(
            !everything.contains(clear),
            "{sdk:?} stored {clear:?}: {everything}"
        );
    }
}

#[test]
fn segment_python_messages_land_once_with_ids_and_hashed_traits() {
    every_message_lands_once(Sdk::SegmentPython);
}

#[test]
fn rudder_python_messages_land_once_with_ids_and_hashed_traits() {
    every_message_lands_once(Sdk::RudderPython);
}

#[test]
fn segment_node_messages_land_once_with_ids_and_hashed_traits() {
    every_message_lands_once(Sdk::SegmentNode);
}

#[test]
fn rudder_node_messages_land_once_with_ids_and_hashed_traits() {
    every_message_lands_once(Sdk::RudderNode);
}

// ---------------------------------------------------------------------------
// A 503 after the commit: the SDK retries, the retry is a duplicate

/// The `messageId`s of a `/v1/batch` request.
fn message_ids(req: &Request) -> Vec<String> {
    req.json().expect("a JSON batch")["batch"]
        .as_array()
        .expect("a batch")
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect()
}

/// Tally stored the first request, the proxy answered the SDK 503 with
/// `Retry-After: 1`, the SDK sent the same messages again, and Tally
/// answered the retry `200 {"success": true}` with every message a
/// duplicate.
fn a_503_after_the_commit_is_retried_into_duplicates(sdk: Sdk) {
    let app = spawn_app();
    let proxy = Proxy::start(&app.base, Plan::answer_503_after_forwarding("/v1/batch", 1));
    let sent = json!([
        {"type": "track", "event": "order.completed", "messageId": "r1", "userId": "u9",
         "properties": {"order_id": "77", "total": 5}},
        {"type": "page", "name": "Thanks", "messageId": "r2", "anonymousId": "a9",
         "url": "https://shop.example.com/thanks"},
        {"type": "identify", "messageId": "r3", "userId": "u9", "traits": {"plan": "free"}}
    ]);
    let run = sdk.run(&proxy.base, &app.token, &app.site_key, &sent, &[]);
    assert!(run.ok, "{sdk:?}: {} {}", run.report, run.stderr);
    let exchanges = proxy.exchanges();
    let first = &exchanges[0];
    assert_eq!(first.answered, 503);
    assert_eq!(
        first.request.header("content-encoding") == Some("gzip"),
        sdk.gzips(),
        "{sdk:?}: {:?}",
        first.request.headers
    );
    let ids = message_ids(&first.request);
    let stored = first.upstream.as_ref().expect("forwarded");
    assert_eq!(stored.status, 200, "{sdk:?}");
    let answer = stored.json().unwrap();
    assert_eq!(answer["success"], true);
    assert_eq!(answer["accepted"], ids.len(), "{sdk:?}: {answer}");
    let retry: &Exchange = exchanges[1..]
        .iter()
        .find(|e| message_ids(&e.request) == ids)
        .unwrap_or_else(|| panic!("{sdk:?} did not retry {ids:?}: {exchanges:?}"));
    assert_eq!(retry.answered, 200);
    let answer = retry.upstream.as_ref().unwrap().json().unwrap();
    assert_eq!(answer["success"], true);
    assert_eq!(
        (answer["accepted"].as_u64(), answer["deduplicated"].as_u64()),
        (Some(0), Some(ids.len() as u64)),
        "{sdk:?}: {answer}"
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 3, "{sdk:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM duplicates"),
        ids.len() as i64,
        "{sdk:?}"
    );
}

#[test]
fn segment_python_retries_a_503_and_the_retry_is_a_duplicate() {
    a_503_after_the_commit_is_retried_into_duplicates(Sdk::SegmentPython);
}

#[test]
fn rudder_python_retries_a_503_and_the_retry_is_a_duplicate() {
    a_503_after_the_commit_is_retried_into_duplicates(Sdk::RudderPython);
}

#[test]
fn segment_node_retries_a_503_and_the_retry_is_a_duplicate() {
    a_503_after_the_commit_is_retried_into_duplicates(Sdk::SegmentNode);
}

#[test]
fn rudder_node_retries_a_503_and_the_retry_is_a_duplicate() {
    a_503_after_the_commit_is_retried_into_duplicates(Sdk::RudderNode);
}

#[test]
fn rudder_python_reads_the_code_and_message_of_a_401() {
    let app = spawn_app();
    let run = Sdk::RudderPython.run(&app.base, "tly_wrong", &app.site_key, &messages(), &[]);
    assert!(!run.ok);
    let error = run.report["errors"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("APIError")
            && error.contains("unauthorized")
            && error.contains("not valid"),
        "{}",
        run.report
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 0);
}

// ---------------------------------------------------------------------------
// Meta's Conversions API

/// A purchase with clear-text personal data (the SDK hashes `email` and
/// `phone` itself; the IP address goes as is) and a page view.
fn capi_events(purchase_id: &str) -> Value {
    json!([
        {"event_name": "Purchase", "event_id": purchase_id, "event_time": 1_795_428_000,
         "event_source_url": "https://shop.example.com/thanks", "action_source": "website",
         "user_data": {"email": "Jane@Example.com ", "phone": "+1 (555) 010-9999",
                       "client_ip_address": "203.0.113.9", "client_user_agent": "Mozilla/5.0"},
         "custom_data": {"value": 19.99, "currency": "EUR", "order_id": "42"}},
        {"event_name": "PageView", "event_id": "pv-1", "event_time": 1_795_428_001,
         "event_source_url": "https://shop.example.com/", "action_source": "website",
         "user_data": {"client_ip_address": "203.0.113.9", "client_user_agent": "Mozilla/5.0"}}
    ])
}

#[test]
fn meta_capi_and_the_pixel_copy_of_order_42_count_once() {
    let app = spawn_app();
    // The browser's copy, as `tally.track('Purchase', {event_id: 'order-42'})` sends it.
    let pixel = json!({"site": app.site_key, "event_id": "order-42", "event_name": "Purchase",
                       "url": "http://localhost:3000/thanks", "properties": {"value": 19.99}});
    assert_eq!(app.pixel(pixel, ORIGIN).status(), 204);
    for attempt in ["first", "resend"] {
        let run = Sdk::MetaPython.run(
            &app.base,
            &app.token,
            &app.site_key,
            &capi_events("order-42"),
            &[],
        );
        assert!(run.ok, "{attempt}: {} {}", run.report, run.stderr);
        assert_eq!(run.report["events_received"], 2, "{}", run.report);
        assert_eq!(run.report["messages"], json!([]));
        assert!(!run.report["fbtrace_id"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
    }
    assert_eq!(
        app.query(
            "SELECT event_id, source, seen_pixel, seen_server FROM events
             WHERE event_name = 'Purchase'"
        ),
        [[json!("order-42"), json!("pixel"), json!(true), json!(true)]]
    );
    assert_eq!(
        app.query("SELECT event_id, url FROM events WHERE event_name = 'PageView'"),
        [[json!("pv-1"), json!("https://shop.example.com/")]]
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM duplicates WHERE event_id = 'order-42' AND source = 'server'"
        ),
        2
    );
    let user_data: Value = serde_json::from_str(
        app.query("SELECT CAST(user_data AS VARCHAR) FROM events WHERE event_id = 'order-42'")[0]
            [0]
        .as_str()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(user_data["em"], json!([sha256("jane@example.com")]));
    assert_eq!(user_data["ph"], json!([sha256("15550109999")]));
    assert!(user_data.get("client_ip_address").is_none(), "{user_data}");
    let everything = format!(
        "{:?} {:?}",
        app.query("SELECT * FROM events"),
        app.query("SELECT * FROM duplicates")
    )
    .to_lowercase();
    for clear in ["jane@", "203.0.113.9", "(555)", "15550109999"] {
        assert!(
            !everything.contains(clear),
            "stored {clear:?}: {everything}"
        );
    }
    // test_event_code: answered like live traffic, nothing stored.
    let run = Sdk::MetaPython.run(
        &app.base,
        &app.token,
        &app.site_key,
        &capi_events("order-43"),
        &[("TEST_EVENT_CODE", "TEST4242")],
    );
    assert!(run.ok, "{} {}", run.report, run.stderr);
    assert_eq!(run.report["events_received"], 2);
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE event_id = 'order-43'"),
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
    assert_eq!(app.count("SELECT count(*) FROM duplicates"), 3);
}

/// The `event_id`s in a CAPI request's form body.
fn capi_event_ids(req: &Request) -> Vec<String> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&req.body_bytes()).unwrap();
    let data = &form.iter().find(|(k, _)| k == "data").expect("data").1;
    let data: Vec<String> = serde_json::from_str(data).unwrap();
    data.iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn meta_capi_resent_after_a_503_is_a_duplicate() {
    let app = spawn_app();
    let proxy = Proxy::start(&app.base, Plan::answer_503_after_forwarding("/", 1));
    let run = Sdk::MetaPython.run(
        &proxy.base,
        &app.token,
        &app.site_key,
        &capi_events("order-7"),
        &[],
    );
    assert!(run.ok, "{} {}", run.report, run.stderr);
    assert_eq!(run.report["attempts"], 2, "{}", run.report);
    let exchanges = proxy.exchanges();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(exchanges[0].answered, 503);
    assert_eq!(exchanges[0].upstream.as_ref().unwrap().status, 200);
    assert_eq!(
        capi_event_ids(&exchanges[0].request),
        capi_event_ids(&exchanges[1].request)
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 2);
    assert_eq!(app.count("SELECT count(*) FROM duplicates"), 2);
}

// ---------------------------------------------------------------------------
// Limits, keys and shapes

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `prefix` and then `inflated` bytes of JSON whitespace, gzipped. Deflate
/// tops out near 1,000:1, so past 16 MiB the bulk is one 16 MiB member
/// repeated: concatenated members are one gzip stream (RFC 1952), ~1 MiB
/// on the wire for 1 GiB inflated.
fn gzip_bomb(prefix: &str, inflated: usize) -> Vec<u8> {
    let member_size = inflated.min(16 << 20);
    let member = gzip(&vec![b' '; member_size]);
    let mut out = gzip(prefix.as_bytes());
    for _ in 0..inflated.div_ceil(member_size) {
        out.extend_from_slice(&member);
    }
    out
}

fn basic(token: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{token}:"))
    )
}

/// `n` track messages, each with `pad` bytes of padding in its properties.
fn batch_of(n: usize, pad: usize) -> String {
    let messages: Vec<Value> = (0..n)
        .map(|i| {
            json!({"type": "track", "event": "order.completed", "messageId": format!("big{i}"),
                   "properties": {"pad": "x".repeat(pad)}})
        })
        .collect();
    json!({ "batch": messages }).to_string()
}

/// `n` CAPI events, each with `pad` bytes of padding in its custom data.
fn capi_of(n: usize, pad: usize) -> String {
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"event_name": "Purchase", "event_id": format!("big{i}"), "event_time": 1_795_428_000,
                        "custom_data": {"pad": "x".repeat(pad)}}))
        .collect();
    json!({ "data": data }).to_string()
}

/// POSTs each `(label, body, gzipped)` from 4 threads at once while
/// sampling the server's memory; every answer must be 413. Returns the
/// answers' JSON bodies and the server's peak RSS above its RSS before.
fn all_413_with_flat_memory(
    server: &ServerProcess,
    url: &str,
    auth: Option<String>,
    bodies: Vec<(&'static str, Vec<u8>, bool)>,
) -> (Vec<Value>, u64) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let before = server.rss_kib();
    let bodies = std::sync::Arc::new(bodies);
    let (peak, answers) = server.peak_rss_kib_during(|| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, auth, bodies) =
                    (client.clone(), url.to_owned(), auth.clone(), bodies.clone());
                std::thread::spawn(move || {
                    let mut answers = Vec::new();
                    for (label, body, gzipped) in bodies.iter() {
                        let mut req = client
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .body(body.clone());
                        if *gzipped {
                            req = req.header("Content-Encoding", "gzip");
                        }
                        if let Some(auth) = &auth {
                            req = req.header("Authorization", auth);
                        }
                        let res = req.send().unwrap();
                        assert_eq!(res.status(), 413, "{label}");
                        answers.push(res.json::<Value>().unwrap());
                    }
                    answers
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    (answers, peak.saturating_sub(before) / 1024)
}

/// What an inflater without a limit would have held: 1 GiB. What the
/// limit allows: a few 4 MiB buffers per worker, and the allocator's slack.
const FLAT_MIB: u64 = 96;

/// Nothing at all in the store, asked through the running server.
fn assert_nothing_stored(dir: &Path) {
    let out = tally_ok(
        dir,
        &[
            "sql",
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM duplicates) AS n",
            "--format",
            "json",
        ],
    );
    assert_eq!(out, "[{\"n\":0}]\n");
}

#[test]
fn segment_gzip_bombs_and_oversized_batches_are_413_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let token = add_site(dir.path())["api_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = ServerProcess::start(dir.path());
    let small_bomb = gzip_bomb(r#"{"batch":["#, 10 << 20);
    let big_bomb = gzip_bomb(r#"{"batch":["#, 1 << 30);
    assert!(small_bomb.len() < 12 * 1024, "{}", small_bomb.len());
    assert!(big_bomb.len() < 1_200_000, "{}", big_bomb.len());
    let over_4_mib = batch_of(1_700, 2_500);
    assert!(over_4_mib.len() > 4 << 20);
    let over_2500 = batch_of(2_501, 0);
    assert!(over_2500.len() < 4 << 20);
    let (answers, grew_mib) = all_413_with_flat_memory(
        &server,
        &format!("{}/v1/batch", server.base),
        Some(basic(&token)),
        vec![
            ("10 KiB -> 10 MiB", small_bomb, true),
            ("1 MiB -> 1 GiB", big_bomb.clone(), true),
            ("over 4 MiB inflated", gzip(over_4_mib.as_bytes()), true),
            ("2,501 messages", over_2500.clone().into_bytes(), false),
            ("2,501 messages, gzip", gzip(over_2500.as_bytes()), true),
            ("1 MiB -> 1 GiB again", big_bomb, true),
        ],
    );
    assert!(grew_mib < FLAT_MIB, "RSS grew by {grew_mib} MiB");
    for a in &answers {
        assert_eq!(a["code"], "payload_too_large", "{a}");
        assert!(a["message"].as_str().is_some_and(|m| !m.is_empty()), "{a}");
    }
    assert!(answers
        .iter()
        .any(|a| a["message"].as_str().unwrap().contains("2501 messages")));
    assert_nothing_stored(dir.path());
}

#[test]
fn meta_gzip_bombs_and_oversized_requests_are_413_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let (token, key) = (
        site["api_token"].as_str().unwrap().to_owned(),
        site["site_key"].as_str().unwrap().to_owned(),
    );
    let server = ServerProcess::start(dir.path());
    let big_bomb = gzip_bomb(r#"{"data":["#, 1 << 30);
    let over_4_mib = capi_of(1_000, 4_300);
    assert!(over_4_mib.len() > 4 << 20);
    let (answers, grew_mib) = all_413_with_flat_memory(
        &server,
        &format!("{}/v26.0/{key}/events?access_token={token}", server.base),
        None,
        vec![
            (
                "10 KiB -> 10 MiB",
                gzip_bomb(r#"{"data":["#, 10 << 20),
                true,
            ),
            ("1 MiB -> 1 GiB", big_bomb.clone(), true),
            ("over 4 MiB inflated", gzip(over_4_mib.as_bytes()), true),
            ("1,001 events", capi_of(1_001, 0).into_bytes(), false),
            ("1 MiB -> 1 GiB again", big_bomb, true),
        ],
    );
    assert!(grew_mib < FLAT_MIB, "RSS grew by {grew_mib} MiB");
    for a in &answers {
        assert!(a["error"]["code"].is_number(), "{a}");
        assert!(a["error"]["message"].is_string(), "{a}");
        assert!(a["error"]["fbtrace_id"].is_string(), "{a}");
    }
    assert_nothing_stored(dir.path());
}

/// A valid one-message batch.
const ONE_MESSAGE: &str = r#"{"batch":[{"type":"track","event":"order.completed","messageId":"k1","properties":{"total":1}}]}"#;

#[test]
fn segment_wrong_keys_are_401_and_bodies_that_are_not_batches_400_storing_nothing() {
    let app = spawn_app();
    let post = |path: &str, auth: Option<String>, body: Vec<u8>, gzipped: bool| {
        let mut req = app
            .client
            .post(format!("{}{path}", app.base))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        if gzipped {
            req = req.header("Content-Encoding", "gzip");
        }
        let res = req.send().unwrap();
        (res.status().as_u16(), res.json::<Value>().unwrap())
    };
    let with_key = |key: &str| {
        let mut b: Value = serde_json::from_str(ONE_MESSAGE).unwrap();
        b["writeKey"] = json!(key);
        b.to_string().into_bytes()
    };
    let unauthorized = [
        (
            "/v1/batch",
            Some(basic("tly_wrong")),
            ONE_MESSAGE.as_bytes().to_vec(),
        ),
        (
            "/v1/batch",
            Some("Bearer tly_wrong".into()),
            ONE_MESSAGE.as_bytes().to_vec(),
        ),
        ("/v1/batch", None, with_key("tly_wrong")),
        ("/v1/batch", None, ONE_MESSAGE.as_bytes().to_vec()),
        (
            "/v1/track",
            Some(basic("tly_wrong")),
            br#"{"event":"x","messageId":"k2"}"#.to_vec(),
        ),
    ];
    for (path, auth, body) in unauthorized {
        let (status, answer) = post(path, auth.clone(), body, false);
        assert_eq!(status, 401, "{path} {auth:?}: {answer}");
        assert_eq!(answer["code"], "unauthorized", "{answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    let not_batches: [&[u8]; 9] = [
        b"[]",
        br#"[{"type":"track","event":"x","messageId":"k3"}]"#,
        br#"{"batch":5}"#,
        br#"{"batch":{"type":"track","event":"x","messageId":"k4"}}"#,
        b"{}",
        br#""batch""#,
        b"not json",
        b"",
        br#"{"batch":[{"type":"track""#,
    ];
    for body in not_batches {
        let text = String::from_utf8_lossy(body);
        for gzipped in [false, true] {
            let bytes = if gzipped { gzip(body) } else { body.to_vec() };
            let (status, answer) = post("/v1/batch", Some(basic(&app.token)), bytes, gzipped);
            assert_eq!(status, 400, "{text}: {answer}");
            assert_eq!(answer["code"], "invalid_body", "{answer}");
            assert!(answer["message"].is_string(), "{answer}");
        }
    }
    for body in [&b"[1]"[..], b"garbage", b"", br#"{"event":"x""#] {
        let (status, answer) = post("/v1/track", Some(basic(&app.token)), body.to_vec(), false);
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(body));
    }
    let mut corrupt = gzip(ONE_MESSAGE.as_bytes());
    corrupt.truncate(corrupt.len() / 2);
    let (status, answer) = post("/v1/batch", Some(basic(&app.token)), corrupt, true);
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_body"))
    );
    assert_eq!(
        app.count("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM duplicates)"),
        0
    );
    // And the same key in the right place is taken.
    let (status, answer) = post("/v1/batch", None, with_key(&app.token), false);
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
}

#[test]
fn segment_takes_2500_messages_whole_and_refuses_2501() {
    let app = spawn_app();
    let send = |n: usize| {
        app.client
            .post(format!("{}/v1/batch", app.base))
            .header("Authorization", basic(&app.token))
            .header("Content-Encoding", "gzip")
            .body(gzip(batch_of(n, 0).as_bytes()))
            .send()
            .unwrap()
    };
    assert_eq!(send(2_501).status(), 413);
    assert_eq!(app.count("SELECT count(*) FROM events"), 0);
    let res = send(2_500);
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().unwrap()["accepted"], 2_500);
}

#[test]
fn meta_wrong_tokens_are_401_and_bodies_without_data_400_storing_nothing() {
    let app = spawn_app();
    let url = |site: &str, query: &str| format!("{}/v26.0/{site}/events{query}", app.base);
    let event = r#"{"event_name":"Purchase","event_id":"o1","event_time":1795428000}"#;
    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap();
    let post = |url: String, content_type: &str, body: String| {
        let res = app
            .client
            .post(url)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().unwrap())
    };
    let data = format!("[{}]", serde_json::to_string(event).unwrap());
    let key = app.site_key.as_str();
    let token_query = format!("?access_token={}", app.token);
    let unauthorized = [
        (
            url(key, "?access_token=tly_wrong"),
            "application/x-www-form-urlencoded",
            form(&[("data", &data)]),
        ),
        (
            url(key, ""),
            "application/x-www-form-urlencoded",
            form(&[("data", &data), ("access_token", "tly_wrong")]),
        ),
        (
            url(key, ""),
            "application/json",
            format!(r#"{{"data":[{event}],"access_token":"tly_wrong"}}"#),
        ),
        (
            url(key, ""),
            "application/json",
            format!(r#"{{"data":[{event}]}}"#),
        ),
        (
            url("site_other", &token_query),
            "application/json",
            format!(r#"{{"data":[{event}]}}"#),
        ),
    ];
    for (url, content_type, body) in unauthorized {
        let (status, answer) = post(url.clone(), content_type, body);
        assert_eq!(status, 401, "{url}: {answer}");
        assert_eq!(answer["error"]["code"], 190, "{answer}");
        assert_eq!(answer["error"]["type"], "OAuthException", "{answer}");
        assert!(answer["error"]["fbtrace_id"].is_string(), "{answer}");
    }
    let bad = [
        ("application/x-www-form-urlencoded", form(&[("foo", "1")])),
        ("application/x-www-form-urlencoded", form(&[("data", "5")])),
        (
            "application/x-www-form-urlencoded",
            form(&[("data", "not json")]),
        ),
        ("application/json", "[1]".to_owned()),
        ("application/json", r#"{"data":{}}"#.to_owned()),
        ("application/json", "{".to_owned()),
        // One bad event refuses the request whole, as Meta does.
        (
            "application/json",
            format!(r#"{{"data":[{event},{{"event_id":"no-name"}}]}}"#),
        ),
    ];
    for (content_type, body) in bad {
        let (status, answer) = post(url(key, &token_query), content_type, body.clone());
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], 100, "{answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    assert_eq!(
        app.count("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM duplicates)"),
        0
    );
}
