//! The `tally` binary's commands, with and without a running server.

use crate::helpers::*;
use serde_json::{json, Value};
use std::io::Write;

#[test]
fn site_add_prints_key_token_and_snippet_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    assert!(site["site_key"].as_str().unwrap().starts_with("site_"));
    assert!(site["api_token"].as_str().unwrap().starts_with("tly_"));
    let snippet = site["snippet"].as_str().unwrap();
    assert!(snippet.contains("tally.js"));
    assert!(snippet.contains(site["site_key"].as_str().unwrap()));
    assert_eq!(snippet.lines().count(), 2);
    let list: Value =
        serde_json::from_str(&tally_ok(dir.path(), &["site", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "shop");
    assert_eq!(list[0]["origins"], json!(["https://shop.example.com"]));
    let token_hash: Value = serde_json::from_str(&tally_ok(
        dir.path(),
        &["sql", "SELECT token_hash FROM sites", "--format", "json"],
    ))
    .unwrap();
    assert_ne!(
        token_hash[0]["token_hash"], site["api_token"],
        "the token is stored hashed"
    );
}

#[test]
fn bad_input_exits_non_zero_with_a_message_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = tally(
        dir.path(),
        &["site", "add", "shop", "--origin", "not-a-url"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("origin"));
    assert!(out.stdout.is_empty());
    add_site(dir.path());
    let out = tally(
        dir.path(),
        &["site", "add", "shop", "--origin", "https://a.example"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = tally(dir.path(), &["sql", "SELEC nonsense"]);
    assert!(!out.status.success());
    let out = tally(
        dir.path(),
        &["import", "/nonexistent.ndjson", "--site", "shop"],
    );
    assert!(!out.status.success());
}

#[test]
fn sql_is_read_only_unless_write() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let out = tally(dir.path(), &["sql", "DELETE FROM sites"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--write"));
    tally_ok(dir.path(), &["sql", "DELETE FROM sites", "--write"]);
    assert_eq!(
        tally_ok(
            dir.path(),
            &["sql", "SELECT count(*) AS n FROM sites", "--format", "json"]
        ),
        "[{\"n\":0}]\n"
    );
}

#[test]
fn sql_answers_the_same_with_the_server_running_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let site = add_site(dir.path());
    let server = ServerProcess::start(dir.path());
    let token = site["api_token"].as_str().unwrap();
    let res: Value = reqwest::blocking::Client::new()
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(token)
        .json(&json!({"events": [event("a", "n"), event("b", "n"), event("a", "n")]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(res["accepted"], 2);
    let q = ["sql", "SELECT count(*) FROM events", "--format", "json"];
    let while_running = tally_ok(dir.path(), &q);
    let csv_running = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT event_id, source FROM events ORDER BY 1",
            "--format",
            "csv",
        ],
    );
    assert!(server.terminate(), "SIGTERM exits 0");
    let while_stopped = tally_ok(dir.path(), &q);
    assert_eq!(while_running, "[{\"count_star()\":2}]\n");
    assert_eq!(while_running, while_stopped);
    let csv_stopped = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT event_id, source FROM events ORDER BY 1",
            "--format",
            "csv",
        ],
    );
    assert_eq!(csv_running, "event_id,source\na,server\nb,server\n");
    assert_eq!(csv_running, csv_stopped);
}

#[test]
fn a_site_added_while_serving_works_at_once_and_rotation_revokes_the_old_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let site = add_site(dir.path());
    let client = reqwest::blocking::Client::new();
    let post = |token: &str| {
        client
            .post(format!("{}/v1/events", server.base))
            .bearer_auth(token)
            .json(&json!({"events": [event("a", "n")]}))
            .send()
            .unwrap()
            .status()
    };
    let old = site["api_token"].as_str().unwrap();
    assert_eq!(post(old), 200);
    let rotated: Value = serde_json::from_str(&tally_ok(
        dir.path(),
        &["site", "rotate-token", "shop", "--json"],
    ))
    .unwrap();
    assert_eq!(post(old), 401);
    assert_eq!(post(rotated["api_token"].as_str().unwrap()), 200);
}

#[test]
fn import_twice_changes_nothing_and_history_counts_as_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let file = dir.path().join("backfill.ndjson");
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..2500 {
        writeln!(f, r#"{{"event_id":"o{i}","event_name":"order.completed","occurred_at":"2025-01-01T00:00:00Z","properties":{{"n":{i}}}}}"#).unwrap();
    }
    writeln!(f, r#"{{"event_id":"o1","event_name":"order.completed"}}"#).unwrap();
    writeln!(f, "not json").unwrap();
    writeln!(f).unwrap();
    writeln!(f, r#"{{"event_id":"","event_name":"x"}}"#).unwrap();
    drop(f);
    let path = file.to_str().unwrap();
    let first: Value = serde_json::from_str(&tally_ok(
        dir.path(),
        &["import", path, "--site", "shop", "--json"],
    ))
    .unwrap();
    assert_eq!(
        (
            first["accepted"].as_u64(),
            first["deduplicated"].as_u64(),
            first["rejected"].as_u64()
        ),
        (Some(2500), Some(1), Some(2))
    );
    assert_eq!(first["errors"][0]["line"], 2502);
    let text = tally_ok(dir.path(), &["import", path, "--site", "shop"]);
    assert_eq!(text, "accepted 0, deduplicated 2501, rejected 2\n");
    let n = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT count(*) AS n FROM events WHERE source = 'import'",
            "--format",
            "json",
        ],
    );
    assert_eq!(n, "[{\"n\":2500}]\n");
}

#[test]
fn import_finds_keys_older_than_the_window() {
    // Live traffic first, then a backfill of the same orders long after the window.
    let app = spawn_app();
    app.send(json!([event("o1", "order.completed")]));
    app.clock.advance_secs(30 * 86_400);
    let file = app.dir.path().join("old.ndjson");
    std::fs::write(&file, "{\"event_id\":\"o1\",\"event_name\":\"order.completed\"}\n{\"event_id\":\"o2\",\"event_name\":\"order.completed\"}\n").unwrap();
    let answer = app.import(file, false);
    assert_eq!(
        (answer["accepted"].as_u64(), answer["deduplicated"].as_u64()),
        (Some(1), Some(1))
    );
    // A live copy after the window is still a new event (live traffic does not look back).
    assert_eq!(
        app.send(json!([event("o1", "order.completed")]))["accepted"],
        1
    );
}

/// Several of the import's lookup batches (100,000 lines each): history
/// older than the window, secondary keys, and copies of lines from an
/// earlier batch (live in the window by then, not in the lookup's snapshot).
#[test]
fn a_long_import_finds_history_and_its_own_earlier_lines_across_batches() {
    let app = spawn_app();
    app.set(|s| {
        s.secondary_keys
            .insert("order.completed".into(), "order_id".into());
    });
    // 20,000 orders stored a month ago, sent by the server under other ids.
    let old: Vec<_> = (0..20_000)
        .map(|i| {
            json!({"event_id": format!("srv_{i}"), "event_name": "order.completed",
                        "properties": {"order_id": i}})
        })
        .collect();
    for part in old.chunks(500) {
        app.send(json!(part));
    }
    app.clock.advance_secs(30 * 86_400);
    // 240,000 lines: 210,000 orders, of which the first 20,000 are the
    // stored ones by their order id, then 20,000 repeats of lines 0..20,000
    // and 10,000 of lines 100,000..110,000 (from the first two batches).
    let mut text = String::new();
    let line = |i: usize| {
        format!("{{\"event_id\":\"px_{i}\",\"event_name\":\"order.completed\",\"properties\":{{\"order_id\":\"{i}\"}}}}\n")
    };
    for i in 0..210_000 {
        text.push_str(&line(i));
    }
    for i in (0..20_000).chain(100_000..110_000) {
        text.push_str(&line(i));
    }
    let file = app.dir.path().join("long.ndjson");
    std::fs::write(&file, text).unwrap();
    let answer = app.import(file, false);
    assert_eq!(
        (answer["accepted"].as_u64(), answer["deduplicated"].as_u64()),
        (Some(190_000), Some(50_000))
    );
    assert_eq!(app.count("SELECT count(*) FROM events"), 210_000);
}

/// A backfill read from a named pipe (`zcat backfill.gz > fifo`) cannot be
/// read twice: the lines of each lookup batch are held for the sender, and
/// repeats of lines from earlier batches are still found.
#[test]
fn an_import_from_a_pipe_finds_repeats_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let fifo = dir.path().join("backfill.pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo");
    let mut text = String::new();
    for i in (0..200_000).chain(0..20_000).chain(150_000..180_000) {
        text.push_str(&format!(
            "{{\"event_id\":\"e_{i}\",\"event_name\":\"signup\"}}\n"
        ));
    }
    text.push_str("not json\n");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, text).unwrap())
    };
    let path = fifo.to_str().unwrap();
    let answer: Value = serde_json::from_str(&tally_ok(
        dir.path(),
        &["import", path, "--site", "shop", "--json"],
    ))
    .unwrap();
    writer.join().unwrap();
    assert_eq!(
        (
            answer["accepted"].as_u64(),
            answer["deduplicated"].as_u64(),
            answer["rejected"].as_u64(),
            answer["errors"][0]["line"].as_u64()
        ),
        (Some(200_000), Some(50_000), Some(1), Some(250_001))
    );
}

/// A local import of more keys than it keeps in the writer's index lets
/// the index go part way and looks every key up in the store after that:
/// it must store exactly what the same import through a running server
/// (which keeps every key) stores. The copies after that point repeat
/// earlier lines as they are, with a property more, under another id with
/// the same order id, and reach live rows from before the import (one
/// replaced by a pixel copy under `prefer_pixel`, then met again in a later
/// group) and history from a month before.
#[test]
fn a_local_import_that_lets_its_key_index_go_stores_what_a_served_one_does() {
    use tally::domain::Clock as _;
    let app = spawn_app();
    app.set(|s| {
        s.secondary_keys
            .insert("order.completed".into(), "order_id".into());
        s.policy = tally::domain::DedupPolicy::PreferPixel;
    });
    let order = |id: &str, order_id: &str, extra: Value| {
        let mut props = json!({"order_id": order_id, "a": 1});
        props
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"event_id": id, "event_name": "order.completed", "properties": props})
    };
    let old: Vec<_> = (0..1_000)
        .map(|i| order(&format!("old_{i}"), &format!("O{i}"), json!({})))
        .collect();
    for part in old.chunks(500) {
        app.send(json!(part));
    }
    app.clock.advance_secs(30 * 86_400);
    let live: Vec<_> = (0..2_000)
        .map(|i| order(&format!("live_{i}"), &format!("L{i}"), json!({})))
        .collect();
    for part in live.chunks(500) {
        app.send(json!(part));
    }
    let now = app.clock.now_micros();
    let served_dir = app.stop();
    let local_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        served_dir.path().join("tally.duckdb"),
        local_dir.path().join("tally.duckdb"),
    )
    .unwrap();

    // 600,000 new orders (two keys each: the index lets go after the fifth
    // lookup batch of 100,000 lines), then copies of earlier lines and of
    // the stored events. The 2,000 lines right after the fifth batch repeat
    // its last 2,000: the next lookup must not start before the index has
    // let go. Few copies that need their row read: with the test's clock
    // standing still, every imported row shares one arrival, and a read
    // scans them.
    let file = local_dir.path().join("backfill.ndjson");
    let mut text = String::new();
    let mut line = |v: Value| text.push_str(&format!("{v}\n"));
    let imp = |i: usize, extra: Value| order(&format!("imp_{i}"), &format!("I{i}"), extra);
    let new_and_repeated = (0..500_000)
        .chain(498_000..500_000)
        .chain(500_000..600_000)
        .chain(0..2_000)
        .chain(590_000..592_000);
    for i in new_and_repeated {
        line(imp(i, json!({"p": i % 7})));
    }
    for i in 5_000..5_100 {
        line(imp(i, json!({"extra": "x"})));
    }
    for i in 10_000..10_100 {
        line(order(
            &format!("alt_{i}"),
            &format!("I{i}"),
            json!({"via": "alt"}),
        ));
    }
    for i in 0..100 {
        line(order(
            &format!("live_{i}"),
            &format!("L{i}"),
            json!({"b": 2}),
        ));
        line(order(
            &format!("alt_live_{i}"),
            &format!("L{}", i + 1_000),
            json!({"c": 3}),
        ));
        line(order(
            &format!("old_{i}"),
            &format!("O{i}"),
            json!({"b": 2}),
        ));
    }
    // Under prefer_pixel a pixel copy replaces a live server row; an import
    // copy two chunks later (another commit group, the same lookup) must
    // then name the pixel copy as kept.
    let pixel = |i: usize| {
        let mut v = order(&format!("live_{i}"), &format!("L{i}"), json!({}));
        v["source"] = json!("pixel");
        v
    };
    for i in 200..300 {
        line(pixel(i));
    }
    for i in 100_000..112_000 {
        line(imp(i, json!({"p": i % 7})));
    }
    for i in 200..300 {
        line(order(&format!("live_{i}"), &format!("L{i}"), json!({})));
    }
    std::fs::write(&file, text).unwrap();

    let import = |dir: &std::path::Path, local: bool| {
        let clock = std::sync::Arc::new(tally::domain::ManualClock::starting_now());
        clock.set_micros(now);
        let config = tally::config::Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.to_owned(),
            public_url: "http://127.0.0.1".into(),
            public_url_is_default: true,
            trusted_proxies: Vec::new(),
        };
        let app = if local {
            tally::app::App::open_local(config, clock)
        } else {
            tally::app::App::open(config, clock)
        }
        .unwrap();
        let request = tally::control::Request::Import {
            path: file.clone(),
            site: "shop".into(),
            dry_run: false,
        };
        let answer = tally::control::execute(&app, request).unwrap();
        app.shutdown();
        answer
    };
    let served = import(served_dir.path(), false);
    let local = import(local_dir.path(), true);
    assert_eq!(served, local);
    assert_eq!(
        (served["accepted"].as_u64(), served["deduplicated"].as_u64()),
        (Some(600_000), Some(18_700))
    );
    for table in ["events", "duplicates"] {
        // Every column of every row, as one digest (printing 600,000 rows
        // costs more than the imports).
        let sql = format!(
            "SELECT count(*), md5(string_agg(t::VARCHAR, chr(10) ORDER BY t::VARCHAR)) FROM {table} t"
        );
        let read = |dir: &std::path::Path| tally_ok(dir, &["sql", &sql, "--format", "csv"]);
        let (a, b) = (read(served_dir.path()), read(local_dir.path()));
        assert!(a == b, "{table} differ after a local import");
    }
}

#[test]
fn export_writes_each_format_and_ndjson_round_trips_through_import() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let src = dir.path().join("in.ndjson");
    std::fs::write(
        &src,
        "{\"event_id\":\"a\",\"event_name\":\"n\",\"occurred_at\":\"2026-11-20T10:00:00Z\",\"properties\":{\"k\":1}}\n\
         {\"event_id\":\"b\",\"event_name\":\"n\",\"occurred_at\":\"2026-11-22T10:00:00Z\"}\n",
    )
    .unwrap();
    tally_ok(
        dir.path(),
        &["import", src.to_str().unwrap(), "--site", "shop"],
    );
    for format in ["parquet", "csv", "ndjson"] {
        let out = dir.path().join(format!("out.{format}"));
        tally_ok(
            dir.path(),
            &[
                "export",
                "--site",
                "shop",
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(std::fs::metadata(&out).unwrap().len() > 0, "{format}");
    }
    let out = dir.path().join("range.ndjson");
    let text = tally_ok(
        dir.path(),
        &[
            "export",
            "--site",
            "shop",
            "--format",
            "ndjson",
            "--out",
            out.to_str().unwrap(),
            "--from",
            "2026-11-21",
            "--to",
            "2026-11-22",
        ],
    );
    assert!(text.contains("Exported 1 events"), "{text}");
    let exported = std::fs::read_to_string(&out).unwrap();
    assert!(exported.contains("\"event_id\":\"b\""));
    let again = tally_ok(
        dir.path(),
        &["import", out.to_str().unwrap(), "--site", "shop"],
    );
    assert_eq!(again, "accepted 0, deduplicated 1, rejected 0\n");
    let parquet = dir.path().join("out.parquet");
    let q = format!(
        "SELECT count(*) AS n FROM read_parquet('{}')",
        parquet.display()
    );
    // Reading a file is not a read of the store: only --write may.
    assert!(!tally(dir.path(), &["sql", &q]).status.success());
    assert_eq!(
        tally_ok(dir.path(), &["sql", &q, "--format", "json", "--write"]),
        "[{\"n\":2}]\n"
    );
}

#[test]
fn the_snippet_uses_the_public_url_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tally_bin())
        .args([
            "site",
            "add",
            "blog",
            "--origin",
            "https://blog.example",
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TALLY_PUBLIC_URL", "https://stats.example.com/")
        .output()
        .unwrap();
    assert!(out.status.success());
    let site: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(site["snippet"]
        .as_str()
        .unwrap()
        .contains(r#"src="https://stats.example.com/tally.js""#));
}

#[test]
fn import_rejects_a_bad_line_alone_and_reads_past_a_bom() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let file = dir.path().join("bom.ndjson");
    let mut bytes = "\u{feff}{\"event_id\":\"a\",\"event_name\":\"n\"}\n"
        .as_bytes()
        .to_vec();
    bytes.extend_from_slice(b"{\"event_id\":\"\xff\",\"event_name\":\"n\"}\n");
    bytes.extend_from_slice(b"{\"event_id\":\"b\",\"event_name\":\"n\"}");
    std::fs::write(&file, bytes).unwrap();
    let out = tally(
        dir.path(),
        &["import", file.to_str().unwrap(), "--site", "shop", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(answer["errors"][0]["line"], 2);
    assert_eq!(answer["errors"][0]["code"], "invalid_encoding");
}

#[test]
fn a_snippet_printed_with_the_server_stopped_uses_the_url_it_served_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = std::process::Command::new(tally_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .env("TALLY_PUBLIC_URL", "https://stats.example.org")
        .spawn()
        .unwrap();
    wait_healthy(&format!("http://127.0.0.1:{port}"));
    std::process::Command::new("kill")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    let site = add_site(dir.path());
    assert!(site["snippet"]
        .as_str()
        .unwrap()
        .contains(r#"src="https://stats.example.org/tally.js""#));
}

#[test]
fn the_example_queries_run_as_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    add_site(dir.path());
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sql") {
            let query = std::fs::read_to_string(&path).unwrap();
            let out = tally(dir.path(), &["sql", &query]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
