//! Load generator for `POST /v1/events`: N threads, keep-alive connections,
//! batches of B events of which a share are re-sent copies of earlier ones.
//!
//! ```text
//! cargo run --release --example loadgen -- URL TOKEN [seconds=20] [threads=4] [batch=500] [dup=0.3]
//! ```
//! Prints events/s, accepted / deduplicated, and request latency percentiles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    host: String,
    token: String,
    seconds: u64,
    threads: usize,
    batch: usize,
    dup: f64,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 2 {
        eprintln!("usage: loadgen URL TOKEN [seconds] [threads] [batch] [dup]");
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

fn body(rng: &mut Rng, thread: usize, next_id: &mut u64, batch: usize, dup: f64) -> String {
    let names = ["order.completed", "page.view", "signup", "cart.add"];
    let mut events = Vec::with_capacity(batch);
    for _ in 0..batch {
        let id = if *next_id > 1000 && rng.chance(dup) {
            *next_id - 1 - rng.next() % 1000
        } else {
            *next_id += 1;
            *next_id
        };
        let name = names[(id % 4) as usize];
        events.push(format!(
            r#"{{"event_id":"t{thread}_{id}","event_name":"{name}","source":"server","session_id":"s_{}","properties":{{"order_id":"{id}","total":{}.99}}}}"#,
            id / 7,
            id % 500
        ));
    }
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

fn post(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    token: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let req = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(req.as_bytes())?;
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
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678));
                let mut next_id = 0;
                let mut latencies = Vec::new();
                let mut stream = BufReader::new(TcpStream::connect(&a.host).expect("connect"));
                stream.get_ref().set_nodelay(true).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let body = body(&mut rng, t, &mut next_id, a.batch, a.dup);
                    let t0 = Instant::now();
                    match post(&mut stream, &a.host, &a.token, &body) {
                        Ok((200, answer)) => {
                            latencies.push(t0.elapsed());
                            acc.fetch_add(field(&answer, "accepted"), Ordering::Relaxed);
                            dd.fetch_add(field(&answer, "deduplicated"), Ordering::Relaxed);
                        }
                        Ok((503, _)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Ok((status, answer)) => panic!("status {status}: {answer}"),
                        Err(e) => panic!("request failed: {e}"),
                    }
                }
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
    println!(
        "{:.0} events/s over {secs:.1} s ({} requests of {}; accepted {acc}, deduplicated {dd} = {:.1} %; 503s {}); latency p50 {:.1} ms, p99 {:.1} ms",
        (acc + dd) as f64 / secs,
        latencies.len(),
        a.batch,
        100.0 * dd as f64 / (acc + dd).max(1) as f64,
        failed.load(Ordering::Relaxed),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
}
