//! Load generator for `POST /v1/events` and the Segment drop-in
//! `POST /v1/batch`: N threads, keep-alive connections, batches of B events
//! of which a share are re-sent copies of earlier ones.
//!
//! ```text
//! cargo run --release --example loadgen -- URL TOKEN [seconds=20] [threads=4] [batch=500] [dup=0.3] [mode=events]
//! ```
//! `mode` is `events` (Tally's own shape, bearer token), `segment` (the
//! messages `segment-analytics-python` sends, HTTP Basic write key) or
//! `segment-gzip` (the same, gzipped as the SDKs do by default; the
//! compression runs here, on the load generator's share of the CPU).
//! Prints events/s, accepted / deduplicated, and request latency percentiles,
//! then checks that the server accepted each unique event sent once and
//! answered every copy as a duplicate (exit 1 otherwise). A `503` is retried
//! with the same body. Order ids are unique per thread and event, so a
//! secondary key on `order.completed=order_id` matches only true copies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which endpoint and wire shape.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Events,
    Segment { gzip: bool },
}

struct Args {
    host: String,
    token: String,
    seconds: u64,
    threads: usize,
    batch: usize,
    dup: f64,
    mode: Mode,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 2 {
        eprintln!("usage: loadgen URL TOKEN [seconds] [threads] [batch] [dup] [events|segment|segment-gzip]");
        std::process::exit(2);
    }
    let num = |i: usize, d: f64| {
        a.get(i)
            .map(|s| s.parse::<f64>().expect("a number"))
            .unwrap_or(d)
    };
    Args {
        host: a[0]
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned(),
        token: a[1].clone(),
        seconds: num(2, 20.0) as u64,
        threads: num(3, 4.0) as usize,
        batch: num(4, 500.0) as usize,
        dup: num(5, 0.3),
        mode: match a.get(6).map(String::as_str).unwrap_or("events") {
            "events" => Mode::Events,
            "segment" => Mode::Segment { gzip: false },
            "segment-gzip" => Mode::Segment { gzip: true },
            other => {
                eprintln!("unknown mode {other:?}: events, segment or segment-gzip");
                std::process::exit(2);
            }
        },
    }
}

/// A tiny xorshift generator: no dependency, good enough for load shapes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1e6 < p
    }
}

/// The ids of one batch: new ones, and with chance `dup` a copy of one of
/// the thread's last 1,000.
fn ids(rng: &mut Rng, next_id: &mut u64, batch: usize, dup: f64) -> Vec<u64> {
    (0..batch)
        .map(|_| {
            if *next_id > 1000 && rng.chance(dup) {
                *next_id - 1 - rng.next() % 1000
            } else {
                *next_id += 1;
                *next_id
            }
        })
        .collect()
}

const NAMES: [&str; 4] = ["order.completed", "page.view", "signup", "cart.add"];

fn events_body(thread: usize, ids: &[u64]) -> String {
    let events: Vec<String> = ids
        .iter()
        .map(|id| {
            let name = NAMES[(id % 4) as usize];
            format!(
                r#"{{"event_id":"t{thread}_{id}","event_name":"{name}","source":"server","session_id":"s_{}","properties":{{"order_id":"{thread}_{id}","total":{}.99}}}}"#,
                id / 7,
                id % 500
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// Messages as segment-analytics-python sends them: its context, a
/// timestamp, `page` for page views and `track` for the rest.
fn segment_body(thread: usize, ids: &[u64], now: &str) -> String {
    let messages: Vec<String> = ids
        .iter()
        .map(|id| {
            let common = format!(
                r#""messageId":"t{thread}_{id}","userId":"u_{}","anonymousId":null,"timestamp":"{now}","integrations":{{}},"context":{{"library":{{"name":"analytics-python","version":"2.4.0"}}}}"#,
                id / 7
            );
            match NAMES[(id % 4) as usize] {
                "page.view" => format!(
                    r#"{{"type":"page","name":"Product","category":null,{common},"properties":{{"url":"https://shop.example.com/p/{}","referrer":"https://google.com/"}}}}"#,
                    id % 500
                ),
                name => format!(
                    r#"{{"type":"track","event":"{name}",{common},"properties":{{"order_id":"{thread}_{id}","total":{}.99}}}}"#,
                    id % 500
                ),
            }
        })
        .collect();
    format!(r#"{{"batch":[{}],"sentAt":"{now}"}}"#, messages.join(","))
}

/// One request of `mode`: its path, headers and body.
fn request(mode: Mode, token: &str, json: String) -> (&'static str, String, Vec<u8>) {
    match mode {
        Mode::Events => (
            "/v1/events",
            format!("Authorization: Bearer {token}\r\n"),
            json.into_bytes(),
        ),
        Mode::Segment { gzip } => {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
            let mut headers = format!("Authorization: Basic {basic}\r\n");
            let body = if gzip {
                headers.push_str("Content-Encoding: gzip\r\n");
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(json.as_bytes()).unwrap();
                e.finish().unwrap()
            } else {
                json.into_bytes()
            };
            ("/v1/batch", headers, body)
        }
    }
}

fn post(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    (path, headers, body): &(&str, String, Vec<u8>),
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes())?;
    stream.get_mut().write_all(body)?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0;
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

fn field(json: &str, name: &str) -> u64 {
    json.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a = Arc::new(args());
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, deduplicated, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (sent_unique, sent_copies) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let handles: Vec<_> = (0..a.threads)
        .map(|t| {
            let (a, stop, acc, dd, failed) = (
                a.clone(),
                stop.clone(),
                accepted.clone(),
                deduplicated.clone(),
                failed.clone(),
            );
            let (sent_unique, sent_copies) = (sent_unique.clone(), sent_copies.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678));
                let mut next_id = 0;
                let mut latencies = Vec::new();
                let mut stream = BufReader::new(TcpStream::connect(&a.host).expect("connect"));
                stream.get_ref().set_nodelay(true).unwrap();
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let (mut unique, mut copies) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let before = next_id;
                    let ids = ids(&mut rng, &mut next_id, a.batch, a.dup);
                    let json = match a.mode {
                        Mode::Events => events_body(t, &ids),
                        Mode::Segment { .. } => segment_body(t, &ids, &now),
                    };
                    let request = request(a.mode, &a.token, json);
                    // A 503 is retried with the same body, as real senders
                    // do, so every batch is stored once and the end check
                    // below is exact.
                    loop {
                        let t0 = Instant::now();
                        match post(&mut stream, &a.host, &request) {
                            Ok((200, answer)) => {
                                latencies.push(t0.elapsed());
                                acc.fetch_add(field(&answer, "accepted"), Ordering::Relaxed);
                                dd.fetch_add(field(&answer, "deduplicated"), Ordering::Relaxed);
                                break;
                            }
                            Ok((503, _)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Ok((status, answer)) => panic!("status {status}: {answer}"),
                            Err(e) => panic!("request failed: {e}"),
                        }
                    }
                    unique += next_id - before;
                    copies += ids.len() as u64 - (next_id - before);
                }
                sent_unique.fetch_add(unique, Ordering::Relaxed);
                sent_copies.fetch_add(copies, Ordering::Relaxed);
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(a.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let (acc, dd) = (
        accepted.load(Ordering::Relaxed),
        deduplicated.load(Ordering::Relaxed),
    );
    let mode = match a.mode {
        Mode::Events => "/v1/events",
        Mode::Segment { gzip: false } => "/v1/batch",
        Mode::Segment { gzip: true } => "/v1/batch gzip",
    };
    println!(
        "{:.0} events/s over {secs:.1} s ({} requests of {}; accepted {acc}, deduplicated {dd} = {:.1} %; 503s {}); latency p50 {:.1} ms, p99 {:.1} ms; {mode}",
        (acc + dd) as f64 / secs,
        latencies.len(),
        a.batch,
        100.0 * dd as f64 / (acc + dd).max(1) as f64,
        failed.load(Ordering::Relaxed),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    // The end check: every unique event sent was accepted once, every copy
    // answered as a duplicate.
    let (unique, copies) = (
        sent_unique.load(Ordering::Relaxed),
        sent_copies.load(Ordering::Relaxed),
    );
    println!("end check: sent {unique} unique and {copies} copies");
    if (acc, dd) != (unique, copies) {
        eprintln!("end check FAILED: accepted {acc} (sent {unique} unique), deduplicated {dd} (sent {copies} copies)");
        std::process::exit(1);
    }
}
