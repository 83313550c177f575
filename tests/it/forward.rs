//! Forwarding (SPEC §6): each unique event reaches each destination once,
//! after dedup, through 5xx, 429, kill -9, parking and the settle delay.
//! The receivers are written here: an HTTP/1.1 server on loopback that
//! records every request, as a webhook that checks signatures with the
//! secret, or as a Graph API that answers like Meta.

use crate::helpers::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The webhook secret every test destination signs with.
const SECRET: &str = "whsec_5b7f0e";

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
    status: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// What a receiver does: recompute the HMAC of the raw body.
    fn signed_with(&self, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&self.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.header("x-tally-signature") == expected
    }

    /// The webhook's event id, checked against its idempotency key.
    fn event_id(&self) -> String {
        let body = self.json();
        let id = body["event_id"].as_str().expect("an event_id").to_owned();
        assert_eq!(self.header("idempotency-key"), id, "key header = event_id");
        assert_eq!(body["idempotency_key"], id, "key in the body = event_id");
        id
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An answer: status, extra headers, body.
struct Reply(u16, Vec<(&'static str, String)>, String);

fn status(code: u16) -> Reply {
    Reply(code, Vec::new(), String::new())
}

type Answer = dyn Fn(usize, &Hit) -> Reply + Send + Sync;

/// A receiver on 127.0.0.1: records each request and answers it with
/// `answer(n, request)`, `n` counting requests from 0 in arrival order.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start(answer: impl Fn(usize, &Hit) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let recorded = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (hits, answer) = (recorded.clone(), answer.clone());
                std::thread::spawn(move || serve_connection(stream, &hits, &*answer));
            }
        });
        Receiver { url, hits }
    }

    /// A webhook that answers 200 when the signature is right and 401 when not.
    fn webhook() -> Receiver {
        Receiver::start(|_, hit| status(if hit.signed_with(SECRET) { 200 } else { 401 }))
    }

    /// A Graph API that takes every event, as Meta answers.
    fn graph() -> Receiver {
        Receiver::start(|_, hit| meta_received(hit))
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The answered requests, once `done` holds for them.
    fn wait(&self, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hits: Vec<Hit> = self.hits().into_iter().filter(|h| h.status > 0).collect();
            if done(&hits) {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {} requests: {:?}",
                hits.len(),
                hits.iter()
                    .map(|h| (h.status, String::from_utf8_lossy(&h.body).into_owned()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits for `n` answered requests, then a second more, and checks
    /// that no other request came.
    fn exactly(&self, n: usize) -> Vec<Hit> {
        self.wait(&format!("{n} requests"), |h| h.len() >= n);
        std::thread::sleep(Duration::from_secs(1));
        let hits = self.hits();
        assert_eq!(hits.len(), n, "no request beyond the expected {n}");
        hits
    }
}

fn serve_connection(stream: TcpStream, hits: &Mutex<Vec<Hit>>, answer: &Answer) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let hit = Hit {
            path,
            headers,
            body,
            at: Instant::now(),
            status: 0,
        };
        let n = {
            let mut all = hits.lock().unwrap();
            all.push(hit.clone());
            all.len() - 1
        };
        let Reply(code, extra, text) = answer(n, &hit);
        hits.lock().unwrap()[n].status = code;
        let mut head = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            text.len()
        );
        for (k, v) in extra {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        let out = reader.get_mut();
        if out.write_all(head.as_bytes()).is_err() || out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// Meta's success answer for a request's `data`.
fn meta_received(hit: &Hit) -> Reply {
    let n = hit.json()["data"].as_array().map_or(0, Vec::len);
    Reply(
        200,
        Vec::new(),
        json!({"events_received": n, "messages": [], "fbtrace_id": "AbCdEf123"}).to_string(),
    )
}

/// Meta's error shape.
fn meta_error(http: u16, code: u32, message: &str) -> Reply {
    let body = json!({"error": {"message": message, "type": "OAuthException",
                                "code": code, "fbtrace_id": "AbCdEf123"}});
    Reply(http, Vec::new(), body.to_string())
}

/// `tally forward add shop ARGS --json`, through the server's socket when
/// one runs on `dir`; the new destination's id.
fn forward_add(dir: &Path, args: &[&str]) -> u64 {
    let mut all = vec!["forward", "add", "shop"];
    all.extend_from_slice(args);
    all.push("--json");
    let added: Value = serde_json::from_str(&tally_ok(dir, &all)).unwrap();
    added["id"].as_u64().unwrap()
}

/// `tally forward list --json`, by destination id.
fn forward_list(dir: &Path) -> BTreeMap<u64, Value> {
    let listed: Value =
        serde_json::from_str(&tally_ok(dir, &["forward", "list", "--json"])).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_u64().unwrap(), d.clone()))
        .collect()
}

/// `(delivered, pending, parked)` of one destination of `forward list`.
fn outbox_counts(listed: &Value) -> (u64, u64, u64) {
    let n = |k: &str| listed[k].as_u64().unwrap();
    (n("delivered"), n("pending"), n("parked"))
}

fn metrics(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.base))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of one exact Prometheus series.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in\n{text}"))
}

fn order(id: &str, props: Value) -> Value {
    json!({"event_id": id, "event_name": "order.completed", "source": "server", "properties": props})
}

fn pixel_order(app: &TestApp, id: &str, props: Value) {
    let body = json!({"site": app.site_key, "event_id": id, "event_name": "order.completed",
                      "properties": props});
    assert_eq!(app.pixel(body, ORIGIN).status(), 204);
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[test]
fn each_unique_event_is_delivered_once_when_pixel_and_server_both_send_it() {
    let app = spawn_app();
    let hook = Receiver::webhook();
    let graph = Receiver::graph();
    let dir = app.dir.path();
    forward_add(dir, &["--webhook", &hook.url, "--secret", SECRET]);
    forward_add(
        dir,
        &[
            "--meta",
            "PX1",
            "--token",
            "META_TOKEN",
            "--graph-url",
            &graph.url,
            "--rename",
            "order.completed=Purchase",
        ],
    );

    // The clock moves between requests, as it does live: each commit's
    // events are recorded as one outbox group per destination.
    for i in 1..=10 {
        pixel_order(
            &app,
            &format!("ord_{i}"),
            json!({"order_id": i.to_string()}),
        );
        app.clock.advance_secs(1);
    }
    let page_view = json!({"site": app.site_key, "event_id": "pv_1", "event_name": "page.view"});
    assert_eq!(app.pixel(page_view, ORIGIN).status(), 204);
    let server: Vec<Value> = (5..=15)
        .map(|i| {
            let mut e = order(
                &format!("ord_{i}"),
                json!({"order_id": i.to_string(), "value": 10, "currency": "EUR"}),
            );
            e["user_data"] =
                json!({"email": " Alice@Example.com ", "client_ip_address": "192.0.2.1"});
            e
        })
        .chain([event("su_1", "signup")])
        .collect();
    let answer = app.send(json!(server));
    assert_eq!(
        (answer["accepted"].clone(), answer["deduplicated"].clone()),
        (json!(6), json!(6))
    );
    // A replay of the whole batch changes nothing downstream either.
    assert_eq!(app.send(json!(server))["deduplicated"], 12);

    let expected: BTreeSet<String> = (1..=15)
        .map(|i| format!("ord_{i}"))
        .chain(["su_1".to_owned()])
        .collect();

    let hits = hook.exactly(16);
    let ids: Vec<String> = hits.iter().map(Hit::event_id).collect();
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "each once, no page view"
    );
    for h in &hits {
        assert_eq!(h.status, 200, "the receiver accepted the signature");
        assert!(h.signed_with(SECRET) && !h.signed_with("another secret"));
        assert_eq!(h.path, "/");
        assert_eq!(h.header("content-type"), "application/json");
        let body = h.json();
        assert_eq!(h.header("x-tally-timestamp"), body["sent_at"].to_string());
        assert_eq!(body["site"], "shop");
        assert_eq!(
            body["event_name"],
            if body["event_id"] == "su_1" {
                "signup"
            } else {
                "order.completed"
            }
        );
    }
    let ord_11 = hits
        .iter()
        .find(|h| h.json()["event_id"] == "ord_11")
        .unwrap()
        .json();
    assert_eq!(ord_11["source"], "server");
    assert_eq!(
        ord_11["properties"],
        json!({"order_id": "11", "value": 10, "currency": "EUR"})
    );
    assert_eq!(ord_11["user_data"]["em"], sha256_hex("alice@example.com"));

    // Meta: batches of the same unique events, renamed, hashed, never an IP.
    let requests = graph.wait("16 events at the Graph API", |h| {
        h.iter()
            .map(|h| h.json()["data"].as_array().unwrap().len())
            .sum::<usize>()
            >= 16
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(graph.hits().len(), requests.len(), "nothing more after");
    let mut meta_ids = Vec::new();
    for r in &requests {
        assert_eq!(r.path, "/v26.0/PX1/events");
        let body = r.json();
        assert_eq!(body["access_token"], "META_TOKEN");
        for e in body["data"].as_array().unwrap() {
            meta_ids.push(e["event_id"].as_str().unwrap().to_owned());
            assert_eq!(e["action_source"], "website");
            assert!(e["event_time"].as_i64().unwrap() > 1_700_000_000);
            assert!(e["user_data"].get("client_ip_address").is_none());
            let name = if e["event_id"] == "su_1" {
                "signup"
            } else {
                "Purchase"
            };
            assert_eq!(e["event_name"], name);
            if e["event_id"] == "ord_12" {
                assert_eq!(e["user_data"]["em"], sha256_hex("alice@example.com"));
                assert_eq!(e["custom_data"]["currency"], "EUR");
            }
        }
    }
    meta_ids.sort();
    assert_eq!(
        meta_ids,
        expected.iter().cloned().collect::<Vec<_>>(),
        "each once"
    );

    let listed = forward_list(dir);
    for d in listed.values() {
        assert_eq!(outbox_counts(d), (16, 0, 0));
    }
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_once_after_backoff() {
    let app = spawn_app();
    // 503 twice, then 200: the sender backs off 1 s, then 2 s.
    let hook = Receiver::start(|n, _| status(if n < 2 { 503 } else { 200 }));
    forward_add(
        app.dir.path(),
        &["--webhook", &hook.url, "--secret", SECRET],
    );
    let ids: Vec<String> = (0..5).map(|i| format!("o{i}")).collect();
    app.send(json!(ids
        .iter()
        .map(|id| order(id, json!({})))
        .collect::<Vec<_>>()));
    // More arrive while the receiver is down.
    hook.wait("the first 503", |h| !h.is_empty());
    let more: Vec<String> = (5..8).map(|i| format!("o{i}")).collect();
    app.send(json!(more
        .iter()
        .map(|id| order(id, json!({})))
        .collect::<Vec<_>>()));

    let hits = hook.exactly(2 + 8);
    assert_eq!(
        hits[0].event_id(),
        hits[1].event_id(),
        "a retry resends the same event"
    );
    assert_eq!(hits[1].event_id(), hits[2].event_id());
    let gap = |a: usize, b: usize| hits[b].at.duration_since(hits[a].at).as_secs_f64();
    assert!(
        (0.95..2.0).contains(&gap(0, 1)),
        "first backoff ~1 s, was {}",
        gap(0, 1)
    );
    assert!(
        (1.95..3.5).contains(&gap(1, 2)),
        "second backoff ~2 s, was {}",
        gap(1, 2)
    );
    let delivered: Vec<String> = hits.iter().filter(|h| h.ok()).map(Hit::event_id).collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    let mut all: Vec<String> = ids.into_iter().chain(more).collect();
    all.sort();
    assert_eq!(sorted, all, "each event delivered once");
    assert!(hits.iter().all(|h| h.signed_with(SECRET)));

    let text = metrics(&app);
    let d = r#"destination="1",kind="webhook""#;
    assert_eq!(
        series(
            &text,
            &format!("tally_forward_deliveries_total{{{d},result=\"delivered\"}}")
        ),
        8.0
    );
    assert_eq!(
        series(
            &text,
            &format!("tally_forward_deliveries_total{{{d},result=\"retried\"}}")
        ),
        2.0
    );
    assert_eq!(
        series(
            &text,
            &format!("tally_forward_deliveries_total{{{d},result=\"parked\"}}")
        ),
        0.0
    );
}

#[test]
fn a_429_retry_after_is_honoured() {
    let app = spawn_app();
    // Without Retry-After the first backoff is 1 to 1.25 s; the receiver asks for 2.
    let hook = Receiver::start(|n, _| match n {
        0 => Reply(429, vec![("Retry-After", "2".into())], String::new()),
        _ => status(200),
    });
    forward_add(
        app.dir.path(),
        &["--webhook", &hook.url, "--secret", SECRET],
    );
    app.send(json!([order("o1", json!({}))]));
    let hits = hook.exactly(2);
    let gap = hits[1].at.duration_since(hits[0].at).as_secs_f64();
    assert!(
        (1.95..3.0).contains(&gap),
        "waited {gap} s for Retry-After: 2"
    );
    assert_eq!(
        (hits[0].event_id(), hits[1].event_id()),
        ("o1".into(), "o1".into())
    );
    assert_eq!((hits[0].status, hits[1].status), (429, 200));

    // Meta's rate limit (code 17, HTTP 400 with an error body) is retried too.
    let graph = Receiver::start(|n, hit| match n {
        0 => {
            let Reply(code, _, body) = meta_error(400, 17, "User request limit reached");
            Reply(code, vec![("Retry-After", "1".into())], body)
        }
        _ => meta_received(hit),
    });
    forward_add(
        app.dir.path(),
        &["--meta", "PX2", "--token", "T", "--graph-url", &graph.url],
    );
    app.send(json!([order("o2", json!({}))]));
    let requests = graph.exactly(2);
    assert_eq!(requests[0].json()["data"], requests[1].json()["data"]);
    assert_eq!(requests[1].json()["data"][0]["event_id"], "o2");
}

#[test]
fn a_slow_receiver_does_not_hold_up_another_destination() {
    let app = spawn_app();
    // Answers after 4 s (inside the 10 s request timeout).
    let slow = Receiver::start(|_, _| {
        std::thread::sleep(Duration::from_secs(4));
        status(200)
    });
    let fast = Receiver::webhook();
    forward_add(
        app.dir.path(),
        &[
            "--webhook",
            &slow.url,
            "--secret",
            SECRET,
            "--events",
            "slow.event",
        ],
    );
    forward_add(
        app.dir.path(),
        &[
            "--webhook",
            &fast.url,
            "--secret",
            SECRET,
            "--events",
            "fast.event",
        ],
    );
    app.send(json!([{"event_id": "s1", "event_name": "slow.event"}]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.hits().is_empty() {
        assert!(Instant::now() < deadline, "the slow request never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(slow.hits()[0].status, 0, "still unanswered");
    let sent = Instant::now();
    app.send(json!([{"event_id": "f1", "event_name": "fast.event"}]));
    let got = fast.wait("the fast destination's event", |h| h.len() == 1);
    assert_eq!(got[0].event_id(), "f1");
    assert!(
        got[0].at.duration_since(sent) < Duration::from_millis(2_500),
        "waited {:?} behind the slow receiver",
        got[0].at.duration_since(sent)
    );
    assert_eq!(
        slow.wait("the slow answer", |h| h.len() == 1)[0].event_id(),
        "s1"
    );
}

#[test]
fn a_kill_9_while_deliveries_are_in_flight_loses_nothing_and_repeats_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = add_site(dir.path())["api_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The 21st request is held unanswered until the server is killed.
    const HELD: usize = 20;
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let hook = Receiver::start(move |n, hit| {
        if n == HELD {
            while !held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        status(if hit.signed_with(SECRET) { 200 } else { 401 })
    });
    // Added with the server stopped: the CLI opens the file itself.
    forward_add(dir.path(), &["--webhook", &hook.url, "--secret", SECRET]);
    let post = |base: &str, ids: std::ops::Range<usize>| {
        let events: Vec<Value> = ids
            .map(|i| order(&format!("k{i}"), json!({"i": i})))
            .collect();
        post_events_to(base, &token, events);
    };

    let server = ServerProcess::start(dir.path());
    post(&server.base, 0..40);
    post(&server.base, 30..60);
    hook.wait_arrived(HELD + 1);
    server.kill9();
    release.store(true, Ordering::SeqCst);

    let server = ServerProcess::start(dir.path());
    post(&server.base, 50..70);
    let hits = hook.exactly(70 + 1);
    let ids: Vec<String> = hits.iter().map(Hit::event_id).collect();
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &ids {
        *copies.entry(id).or_default() += 1;
    }
    assert_eq!(copies.len(), 70, "every unique event arrived");
    let repeated: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(
        repeated,
        vec![(&ids[HELD].as_str(), &2)],
        "only the delivery in flight at the kill is repeated"
    );
    let again: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.json()["event_id"] == ids[HELD])
        .collect();
    assert_eq!(
        again[0].header("idempotency-key"),
        again[1].header("idempotency-key")
    );
    let strip = |h: &Hit| {
        let mut v = h.json();
        v.as_object_mut().unwrap().remove("sent_at");
        v
    };
    assert_eq!(
        strip(again[0]),
        strip(again[1]),
        "the same event, not a re-decided one"
    );
    assert!(hits.iter().all(|h| h.signed_with(SECRET)));
    let states = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT state, count(*) AS n FROM outbox GROUP BY state",
            "--format",
            "json",
        ],
    );
    assert_eq!(states, "[{\"state\":\"delivered\",\"n\":70}]\n");
    assert!(server.terminate());
}

impl Receiver {
    /// Waits until `n` requests arrived, answered or not.
    fn wait_arrived(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.hits().len() < n {
            assert!(Instant::now() < deadline, "{n} requests never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn an_event_dedup_dropped_is_never_delivered() {
    let app = spawn_app();
    app.set(|s| {
        s.secondary_keys
            .insert("order.completed".into(), "order_id".into());
        s.policy = tally::domain::DedupPolicy::PreferPixel;
    });
    let hook = Receiver::webhook();
    forward_add(
        app.dir.path(),
        &["--webhook", &hook.url, "--secret", SECRET],
    );

    // The same key again, from the server and from the pixel.
    app.send(json!([order("a", json!({"order_id": "1"}))]));
    app.send(json!([order("a", json!({"order_id": "1"}))]));
    pixel_order(&app, "a", json!({"order_id": "1"}));
    // Another id, the same order: dropped by the secondary key.
    app.send(json!([order("b", json!({"order_id": "1"}))]));
    pixel_order(&app, "b2", json!({"order_id": 1}));
    // Twice in one batch.
    let twice = app.send(json!([order("c", json!({})), order("c", json!({}))]));
    assert_eq!(twice["deduplicated"], 1);
    // A server copy the pixel then replaces (prefer_pixel) is still one event.
    app.send(json!([order("d", json!({"order_id": "4"}))]));
    pixel_order(&app, "d", json!({"order_id": "4"}));
    // Test mode stores nothing; a refused origin neither.
    let res = app
        .client
        .post(format!("{}/v1/events?test=1", app.base))
        .bearer_auth(&app.token)
        .json(&json!({"events": [order("t", json!({}))]}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let foreign = json!({"site": app.site_key, "event_id": "x", "event_name": "order.completed"});
    assert_eq!(app.pixel(foreign, "https://evil.example").status(), 403);

    let hits = hook.exactly(3);
    let mut ids: Vec<String> = hits.iter().map(Hit::event_id).collect();
    ids.sort();
    assert_eq!(ids, ["a", "c", "d"]);
    assert_eq!(
        app.count("SELECT count(*) FROM outbox"),
        3,
        "an outbox row per unique event only"
    );
    assert_eq!(app.count("SELECT count(*) FROM duplicates"), 6);
}

#[test]
fn parked_events_show_in_list_and_metrics_and_retry_replays_them() {
    let app = spawn_app();
    let dir = app.dir.path();
    let up = Arc::new(AtomicBool::new(false));
    let (a_up, b_up, c_up) = (up.clone(), up.clone(), up.clone());
    // 1: down (503), parks after 2 attempts. 2: refuses (422) at once.
    // 3: Meta refusing the whole request for good (an invalid token, code 190).
    let down = Receiver::start(move |_, _| {
        status(if a_up.load(Ordering::SeqCst) {
            200
        } else {
            503
        })
    });
    let refusing = Receiver::start(move |_, _| {
        status(if b_up.load(Ordering::SeqCst) {
            200
        } else {
            422
        })
    });
    let graph = Receiver::start(move |_, hit| {
        if c_up.load(Ordering::SeqCst) {
            meta_received(hit)
        } else {
            meta_error(400, 190, "Invalid OAuth access token")
        }
    });
    let a = forward_add(
        dir,
        &[
            "--webhook",
            &down.url,
            "--secret",
            SECRET,
            "--max-attempts",
            "2",
            "--events",
            "order.completed",
        ],
    );
    let b = forward_add(dir, &["--webhook", &refusing.url, "--secret", SECRET]);
    let c = forward_add(
        dir,
        &["--meta", "PX3", "--token", "T", "--graph-url", &graph.url],
    );
    assert_eq!((a, b, c), (1, 2, 3));
    app.send(json!([
        order("o1", json!({})),
        event("s1", "signup"),
        event("s2", "signup")
    ]));

    let first = down.wait("two attempts", |h| h.len() >= 2);
    assert_eq!(
        (first[0].event_id(), first[1].event_id()),
        ("o1".into(), "o1".into())
    );
    let refused = refusing.wait("three refusals", |h| h.len() >= 3);
    let took = refused[2].at.duration_since(refused[0].at);
    assert!(
        took < Duration::from_millis(900),
        "a refused event does not hold the next back ({took:?})"
    );
    graph.wait("one refusal", |h| !h.is_empty());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(down.hits().len(), 2, "parked after max attempts: no third");
    assert_eq!(refusing.hits().len(), 3, "a 422 is not retried");
    assert_eq!(graph.hits().len(), 1, "Meta's code 190 is not retried");

    let listed = forward_list(dir);
    let counts = |id: u64| outbox_counts(&listed[&id]);
    assert_eq!(
        (counts(a), counts(b), counts(c)),
        ((0, 0, 1), (0, 0, 3), (0, 0, 3))
    );
    let text = metrics(&app);
    for (id, n) in [(a, 1), (b, 3), (c, 3)] {
        assert_eq!(
            series(
                &text,
                &format!("tally_outbox_events{{destination=\"{id}\",state=\"parked\"}}")
            ),
            n as f64
        );
    }
    assert_eq!(
        series(
            &text,
            r#"tally_forward_deliveries_total{destination="1",kind="webhook",result="parked"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            r#"tally_forward_deliveries_total{destination="1",kind="webhook",result="retried"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            r#"tally_forward_deliveries_total{destination="3",kind="meta",result="parked"}"#
        ),
        3.0
    );

    // The receivers are fixed; retry puts the parked events back in line.
    up.store(true, Ordering::SeqCst);
    let retried_at = Instant::now();
    for id in [a, b, c] {
        let out = tally_ok(dir, &["forward", "retry", &id.to_string()]);
        let n = if id == a { 1 } else { 3 };
        assert_eq!(
            out,
            format!("Requeued {n} parked events of destination {id}.\n")
        );
    }
    let replayed = down.wait("the replay", |h| h.len() >= 3);
    assert_eq!(
        (replayed[2].event_id(), replayed[2].status),
        ("o1".into(), 200)
    );
    let after = replayed[2].at.duration_since(retried_at);
    assert!(
        after < Duration::from_secs(1),
        "retry replays at once, not after the backoff ({after:?})"
    );
    let refused_then_ok = refusing.wait("the replays", |h| h.len() >= 6);
    let mut ids: Vec<String> = refused_then_ok[3..].iter().map(Hit::event_id).collect();
    ids.sort();
    assert_eq!(ids, ["o1", "s1", "s2"]);
    let meta = graph.wait("the replay", |h| h.len() >= 2);
    assert_eq!(meta[1].json()["data"].as_array().unwrap().len(), 3);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        (down.hits().len(), refusing.hits().len(), graph.hits().len()),
        (3, 6, 2)
    );
    let listed = forward_list(dir);
    let counts = |id: u64| outbox_counts(&listed[&id]);
    assert_eq!(
        (counts(a), counts(b), counts(c)),
        ((1, 0, 0), (3, 0, 0), (3, 0, 0))
    );
    let text = metrics(&app);
    assert_eq!(
        series(
            &text,
            r#"tally_outbox_events{destination="2",state="parked"}"#
        ),
        0.0
    );
    assert_eq!(
        series(
            &text,
            r#"tally_forward_deliveries_total{destination="2",kind="webhook",result="delivered"}"#
        ),
        3.0
    );
}

#[test]
fn the_settle_delay_lets_a_later_copy_merge_in_before_the_event_leaves() {
    let app = spawn_app();
    let hook = Receiver::webhook();
    forward_add(
        app.dir.path(),
        &[
            "--webhook",
            &hook.url,
            "--secret",
            SECRET,
            "--settle",
            "60s",
        ],
    );
    app.send(json!([order(
        "o1",
        json!({"value": 20, "currency": "EUR"})
    )]));
    app.clock.advance_secs(30);
    pixel_order(&app, "o1", json!({"coupon": "SPRING", "value": 1}));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        hook.hits().is_empty(),
        "nothing leaves before the settle delay"
    );

    app.clock.advance_secs(31);
    let hits = hook.exactly(1);
    let body = hits[0].json();
    assert_eq!(body["event_id"], "o1");
    assert_eq!(
        body["properties"],
        json!({"value": 20, "currency": "EUR", "coupon": "SPRING"}),
        "the pixel's coupon merged in; the server's value kept"
    );
    assert_eq!(body["sources_seen"], json!(["pixel", "server"]));
    assert_eq!(body["source"], "server");
}

#[test]
fn a_destination_gets_the_events_that_arrive_after_it_is_added_even_in_the_same_microsecond() {
    // The test clock is frozen: every commit below has the same arrival time.
    let app = spawn_app();
    app.send(json!([order("before", json!({}))]));
    let hook = Receiver::webhook();
    forward_add(
        app.dir.path(),
        &["--webhook", &hook.url, "--secret", SECRET],
    );
    app.send(json!([order("after_1", json!({}))]));
    app.send(json!([
        order("after_2", json!({})),
        event("pv", "page.view")
    ]));
    let mut ids: Vec<String> = hook.exactly(2).iter().map(Hit::event_id).collect();
    ids.sort();
    assert_eq!(ids, ["after_1", "after_2"]);
}

#[test]
fn events_undelivered_past_the_age_limit_are_parked() {
    let app = spawn_app();
    let hook = Receiver::start(|_, _| status(503));
    let dir = app.dir.path();
    let id = forward_add(
        dir,
        &[
            "--webhook",
            &hook.url,
            "--secret",
            SECRET,
            "--max-age",
            "60s",
        ],
    );
    app.send(json!([order("o1", json!({}))]));
    hook.wait("the first attempt", |h| !h.is_empty());
    // Backed off: these stay recorded as groups, not yet as event rows.
    for i in 2..=4 {
        app.clock.advance_secs(1);
        app.send(json!([order(&format!("o{i}"), json!({}))]));
    }
    let pending = |list: &BTreeMap<u64, Value>| list[&id]["pending"].as_u64().unwrap();
    assert_eq!(pending(&forward_list(dir)), 4, "a backlog counts whole");
    app.clock.advance_secs(120);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = forward_list(dir);
        if listed[&id]["parked"] == 4 {
            assert_eq!(pending(&listed), 0);
            break;
        }
        assert!(Instant::now() < deadline, "not parked: {:?}", listed[&id]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors = app.query("SELECT DISTINCT last_error FROM outbox");
    assert!(
        errors
            .iter()
            .all(|r| r[0].as_str().unwrap().contains("past the age limit")),
        "{errors:?}"
    );
    let text = metrics(&app);
    assert_eq!(
        series(
            &text,
            &format!("tally_outbox_events{{destination=\"{id}\",state=\"parked\"}}")
        ),
        4.0
    );
}

#[test]
fn meta_refusing_a_batch_for_one_bad_event_parks_only_that_event() {
    let app = spawn_app();
    // Like Meta: one invalid event (here, one named "bad") fails the request.
    let graph = Receiver::start(|_, hit| {
        let body = hit.json();
        let data = body["data"].as_array().unwrap();
        if data.iter().any(|e| e["event_id"] == "bad") {
            meta_error(400, 100, "Invalid parameter")
        } else {
            meta_received(hit)
        }
    });
    let id = forward_add(
        app.dir.path(),
        &["--meta", "PX4", "--token", "T", "--graph-url", &graph.url],
    );
    let ids = ["m1", "m2", "bad", "m3", "m4"];
    app.send(json!(ids
        .iter()
        .map(|i| order(i, json!({})))
        .collect::<Vec<_>>()));

    let requests = graph.wait("the halves", |h| {
        h.iter()
            .filter(|r| r.ok())
            .map(|r| r.json()["data"].as_array().unwrap().len())
            .sum::<usize>()
            >= 4
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(graph.hits().len(), requests.len(), "nothing more after");
    assert_eq!(
        requests[0].json()["data"].as_array().unwrap().len(),
        5,
        "one batch first"
    );
    let mut delivered: Vec<String> = requests
        .iter()
        .filter(|r| r.ok())
        .flat_map(|r| r.json()["data"].as_array().unwrap().clone())
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["m1", "m2", "m3", "m4"], "each good event once");
    let listed = forward_list(app.dir.path());
    assert_eq!(outbox_counts(&listed[&id]), (4, 0, 1));
    let parked = app.query("SELECT last_error FROM outbox WHERE state = 'parked'");
    assert!(
        parked[0][0].as_str().unwrap().contains("Invalid parameter"),
        "{parked:?}"
    );
}

#[test]
fn forward_add_refuses_options_it_would_not_honour() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let hook = "http://127.0.0.1:9/hook";
    for (args, says) in [
        (
            vec!["--webhook", hook, "--max-age", "5s"],
            "--max-age must be at least 1m",
        ),
        (
            vec!["--webhook", hook, "--max-attempts", "0"],
            "--max-attempts must be at least 1",
        ),
        (
            vec!["--webhook", hook, "--token", "T"],
            "cannot be used with",
        ),
        (
            vec!["--meta", "PX", "--token", "T", "--secret", "S"],
            "cannot be used with",
        ),
    ] {
        let all: Vec<&str> = ["forward", "add", "shop"]
            .into_iter()
            .chain(args.clone())
            .collect();
        let out = tally(dir.path(), &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(forward_list(dir.path()).is_empty(), "nothing was added");
}

#[test]
fn a_removed_destinations_id_is_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let add = || forward_add(dir.path(), &["--webhook", "http://127.0.0.1:9/hook"]);
    let (first, second) = (add(), add());
    tally_ok(dir.path(), &["forward", "remove", &second.to_string()]);
    let third = add();
    assert!(third > second, "{first} {second} {third}");
}
