//! One regression test per finding of the hardening review (issue 11), each
//! named after it and reproducing what the review did.

use crate::helpers::*;
use crate::session;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Samples a server's RSS while `f` runs; the peak, in MiB.
fn peak_rss_mib(server: &ServerProcess, f: impl FnOnce()) -> u64 {
    let pid = server.child.id();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(server.rss_kib()));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(kib, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    f();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let mib = peak.load(Ordering::SeqCst) / 1024;
    eprintln!("peak RSS {mib} MiB");
    mib
}

fn pixel_to(base: &str, site_key: &str, body: Value) -> reqwest::blocking::Response {
    let mut body = body;
    body["site"] = json!(site_key);
    reqwest::blocking::Client::new()
        .post(format!("{base}/v1/pixel"))
        .header("Origin", "https://shop.example.com")
        .body(body.to_string())
        .send()
        .unwrap()
}

#[test]
fn finding_1_a_public_key_cannot_grow_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let key = site["site_key"].as_str().unwrap().to_owned();
    let server = ServerProcess::start(dir.path());
    let peak = peak_rss_mib(&server, || {
        for i in 0..1_234 {
            let props = json!({ format!("k{i}"): "x".repeat(12_000) });
            let res = pixel_to(
                &server.base,
                &key,
                json!({"event_id": "same", "event_name": "n", "properties": props}),
            );
            assert_eq!(res.status(), 204);
        }
    });
    let size = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT max(length(properties::VARCHAR)) AS n, max(merges) AS m FROM events",
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&size).unwrap();
    let (bytes, merges) = (v[0]["n"].as_u64().unwrap(), v[0]["m"].as_u64().unwrap());
    assert!(bytes <= 32 * 1024, "the kept row grew to {bytes} bytes");
    assert!(
        merges <= u64::from(tally::dedup::props::MAX_MERGES),
        "{merges} merges"
    );
    assert!(peak < 300, "RSS peaked at {peak} MiB");
    assert_eq!(
        tally_ok(dir.path(), &["sql", "SELECT count(*) FROM duplicates"])
            .lines()
            .nth(2),
        Some("1233")
    );
}

#[test]
fn finding_2_parallel_logins_are_bounded_and_counted_before_hashing() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let mut admin = std::process::Command::new(tally_bin())
        .args(["admin", "set-password", "--data-dir"])
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    admin
        .stdin
        .take()
        .unwrap()
        .write_all(b"right-password-1\n")
        .unwrap();
    assert!(admin.wait().unwrap().success());
    let server = ServerProcess::start(dir.path());
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let peak = peak_rss_mib(&server, || {
        let threads: Vec<_> = (0..256)
            .map(|_| {
                let (base, statuses) = (server.base.clone(), statuses.clone());
                std::thread::spawn(move || {
                    let res = reqwest::blocking::Client::new()
                        .post(format!("{base}/api/login"))
                        .json(&json!({"password": "wrong-password"}))
                        .send()
                        .unwrap();
                    statuses.lock().unwrap().push(res.status().as_u16());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
    let statuses = statuses.lock().unwrap().clone();
    let mut wrong = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(statuses.len(), 256);
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(peak < 300, "RSS peaked at {peak} MiB");
    // However the burst went, one address gets five wrong passwords in
    // all, then it is locked out, even with the right password.
    let attempt = |password: &str| {
        reqwest::blocking::Client::new()
            .post(format!("{}/api/login", server.base))
            .json(&json!({ "password": password }))
            .send()
            .unwrap()
    };
    while attempt("wrong-password").status() == 401 {
        wrong += 1;
    }
    assert_eq!(wrong, 5, "passwords checked from one address");
    let res = attempt("right-password-1");
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
}

fn login_as(app: &TestApp, forwarded_for: &str, password: &str) -> u16 {
    app.client
        .post(format!("{}/api/login", app.base))
        .header("X-Forwarded-For", forwarded_for)
        .json(&json!({ "password": password }))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn finding_3_forwarded_headers_are_trusted_only_from_a_configured_proxy() {
    // No trusted proxy: the header is ignored, the peer address is locked.
    let app = spawn_app();
    app.set_password("right-password-1");
    let statuses: Vec<u16> = (0..30)
        .map(|i| login_as(&app, &format!("10.0.0.{i}"), "wrong"))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(login_as(&app, "10.9.9.9", "right-password-1"), 429);
    // The visitor id follows the peer, not the header.
    let visitor = |app: &TestApp, xff: &str, id: &str| {
        app.client
            .post(format!("{}/v1/pixel", app.base))
            .header("Origin", ORIGIN)
            .header("X-Forwarded-For", xff)
            .body(
                json!({"site": app.site_key, "event_id": id, "event_name": "page.view"})
                    .to_string(),
            )
            .send()
            .unwrap();
        app.query(&format!(
            "SELECT visitor_id FROM events WHERE event_id = '{id}'"
        ))[0][0]
            .clone()
    };
    assert_eq!(
        visitor(&app, "1.1.1.1", "v1"),
        visitor(&app, "2.2.2.2", "v2")
    );

    // Behind a trusted proxy (loopback here), each forwarded client is its own.
    let proxied = spawn_configured(tempfile::tempdir().unwrap(), |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
    });
    proxied.set_password("right-password-1");
    for _ in 0..5 {
        assert_eq!(login_as(&proxied, "203.0.113.1", "wrong"), 401);
    }
    assert_eq!(login_as(&proxied, "203.0.113.1", "wrong"), 429);
    assert_eq!(login_as(&proxied, "203.0.113.2", "right-password-1"), 200);
    assert_ne!(
        visitor(&proxied, "1.1.1.1", "v1"),
        visitor(&proxied, "2.2.2.2", "v2")
    );
}

#[test]
fn finding_4_slow_bodies_are_cut_off_and_the_open_file_limit_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let token = site["api_token"].as_str().unwrap().to_owned();
    let server = ServerProcess::start(dir.path());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = files
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(
        nums[0], nums[1],
        "soft limit raised to the hard one: {files}"
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    let peak = peak_rss_mib(&server, || {
        let started = Instant::now();
        let slow: Vec<_> = (0..60)
            .map(|_| {
                let (addr, token) = (addr.clone(), token.clone());
                std::thread::spawn(move || -> Duration {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                    let head = format!(
                        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                    );
                    s.write_all(head.as_bytes()).unwrap();
                    let t0 = Instant::now();
                    let mut buf = [0u8; 512];
                    loop {
                        // One byte every 2 s until the server answers or hangs up.
                        if s.write_all(b" ").is_err() {
                            return t0.elapsed();
                        }
                        match s.read(&mut buf) {
                            Ok(0) => return t0.elapsed(),
                            Ok(n) => {
                                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                                return t0.elapsed();
                            }
                            Err(_) => std::thread::sleep(Duration::from_secs(1)),
                        }
                        assert!(t0.elapsed() < Duration::from_secs(60), "never cut off");
                    }
                })
            })
            .collect();
        // Meanwhile the appliance answers everyone else.
        std::thread::sleep(Duration::from_secs(2));
        let health = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("{}/healthz", server.base))
            .send()
            .unwrap();
        assert_eq!(health.status(), 200);
        for t in slow {
            let held = t.join().unwrap();
            assert!(
                held < Duration::from_secs(35),
                "a slow body held a connection for {held:?}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    });
    assert!(peak < 300, "RSS peaked at {peak} MiB");
}

#[test]
fn finding_5_sql_without_write_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let server = ServerProcess::start(dir.path());
    let attempts = [
        "COMMIT; CREATE TABLE pwned AS SELECT 42; BEGIN TRANSACTION; SELECT 1",
        "CREATE TABLE pwned AS SELECT 42",
        "COPY (SELECT 1) TO '/tmp/tally-pwned.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "ATTACH '/tmp/tally-pwned.duckdb' AS p",
        "SET GLOBAL threads = 1",
        "INSTALL httpfs",
        "LOAD httpfs",
    ];
    for q in attempts {
        let out = tally(dir.path(), &["sql", q]);
        assert!(!out.status.success(), "{q} ran");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    let tables = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'pwned'",
            "--format",
            "json",
        ],
    );
    assert_eq!(tables, "[{\"n\":0}]\n");
    assert!(!std::path::Path::new("/tmp/tally-pwned.csv").exists());
    drop(server);
}

#[test]
fn finding_6_a_forged_pixel_copy_cannot_override_the_server() {
    let app = spawn_app();
    let forged = json!({"site": app.site_key, "event_id": "ord_X", "event_name": "order.completed",
                        "properties": {"total": 0.01}});
    assert_eq!(app.pixel(forged.clone(), ORIGIN).status(), 204);
    app.send(json!([{"event_id": "ord_X", "event_name": "order.completed", "properties": {"total": 199.99}}]));
    let total = app.query("SELECT properties->>'total' FROM events");
    assert_eq!(total, vec![vec![json!("199.99")]]);
    // Under prefer_pixel the forged copy replaces the server's row but not its values.
    let app = spawn_app();
    app.set(|s| s.policy = tally::domain::DedupPolicy::PreferPixel);
    app.send(json!([{"event_id": "ord_Y", "event_name": "order.completed", "properties": {"total": 199.99}}]));
    let mut forged = forged;
    forged["event_id"] = json!("ord_Y");
    forged["site"] = json!(app.site_key);
    assert_eq!(app.pixel(forged, ORIGIN).status(), 204);
    assert_eq!(
        app.query("SELECT source, properties->>'total' FROM events"),
        vec![vec![json!("pixel"), json!("199.99")]]
    );
    // A pixel's time is its arrival, within a skew; year 0 is refused outright.
    let far = json!({"site": app.site_key, "event_id": "t1", "event_name": "n", "occurred_at": "9999-06-01T00:00:00Z"});
    let res = app.pixel(far, ORIGIN);
    assert_eq!(res.status(), 204, "{}", res.text().unwrap());
    let now = tally::domain::Clock::now_micros(&*app.clock);
    let stored = app.count("SELECT epoch_us(occurred_at) FROM events WHERE event_id = 't1'");
    assert!(
        (stored - now).abs() <= 15 * 60 * 1_000_000,
        "{stored} vs {now}"
    );
    let zero = json!({"site": app.site_key, "event_id": "t0", "event_name": "n", "occurred_at": "0000-01-01T00:00:00Z"});
    assert_eq!(app.pixel(zero, ORIGIN).status(), 400);
}

/// The reviewer's follow-up to finding 6: after the merge limit, pixel
/// copies cannot pin a forged value against the server's.
#[test]
fn finding_6_past_the_merge_limit_the_server_still_wins() {
    let app = spawn_app();
    let pixel = |extra: Value| {
        let mut props = json!({"order_id": "900", "total": 1});
        props
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let body = json!({"site": app.site_key, "event_id": "ord_900",
                          "event_name": "order.completed", "properties": props});
        assert_eq!(app.pixel(body, ORIGIN).status(), 204);
    };
    pixel(json!({}));
    for i in 0..14 {
        pixel(json!({ format!("k{i}"): 1 }));
    }
    assert_eq!(
        app.count("SELECT merges FROM events WHERE event_id = 'ord_900'"),
        i64::from(tally::dedup::props::MAX_MERGES)
    );
    let answer = app.send(json!([{"event_id": "ord_900", "event_name": "order.completed",
                                  "properties": {"order_id": "900", "total": 999, "currency": "USD"}}]));
    assert_eq!(answer["deduplicated"], 1);
    let row = || {
        app.query("SELECT properties->>'total', properties->>'currency' FROM events WHERE event_id = 'ord_900'")
    };
    assert_eq!(
        row(),
        vec![vec![json!("999"), json!(null)]],
        "overwritten, nothing added"
    );
    // A later pixel copy cannot take it back.
    pixel(json!({"total": 2}));
    assert_eq!(row(), vec![vec![json!("999"), json!(null)]]);
}

#[test]
fn finding_7_a_new_password_ends_every_session() {
    let app = spawn_app();
    let s = session::login(&app);
    assert_eq!(s.get(&app, "/api/sites").status(), 200);
    app.set_password("another-password-2");
    assert_eq!(s.get(&app, "/api/sites").status(), 401);
}

#[test]
fn finding_7_the_live_feed_ends_at_logout() {
    let app = spawn_app();
    let s = session::login(&app);
    let mut stream = app
        .client
        .get(format!("{}/api/live?site=shop", app.base))
        .header("Cookie", &s.cookie)
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    let logout = s.post(&app, "/api/logout", &json!({}));
    assert_eq!(logout.status(), 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stream outlived its session"
    );
}

#[test]
fn finding_7_a_sequence_is_not_a_batch_and_bad_queries_are_json_400() {
    let app = spawn_app();
    let res = app.post_events_raw(
        r#"[[{"event_id":"a","event_name":"n"}]]"#.into(),
        Some(&app.token),
    );
    assert_eq!(res.status(), 400);
    assert_eq!(app.count("SELECT count(*) FROM events"), 0);
    let s = session::login(&app);
    let res = s.get(&app, "/api/top?site=shop&limit=-1");
    assert_eq!(res.status(), 400);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(res.json::<Value>().unwrap()["error"], "invalid_request");
}

#[test]
fn finding_7_a_time_past_year_9999_is_refused_so_every_export_imports_again() {
    let app = spawn_app();
    let a = app.send(
        json!([{"event_id": "a", "event_name": "n", "occurred_at": "9999-12-31T23:59:59-01:00"}]),
    );
    assert_eq!(a["errors"][0]["code"], "invalid_occurred_at");
}

#[test]
fn finding_7_malformed_request_lines_are_not_logged_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_logging(dir.path(), None);
    let addr = server.base.trim_start_matches("http://").to_owned();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(b"GARBAGE \x01\x02 NOT-HTTP\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    let log = server.terminate_and_log();
    assert!(!log.contains("ERROR"), "{log}");
}
