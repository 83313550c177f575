//! Constant-rate load for `POST /v1/pixel`, latency corrected for
//! coordinated omission (as wrk2 does): request `i` is due at
//! `start + i / rate`, and its latency counts from when it was due, not from
//! when it was sent, so a stall is charged to every request it held up.
//!
//! Each connection is a thread with a plain keep-alive HTTP/1.1 socket,
//! sending its share of the schedule: one new page view a request, from an
//! allowed origin, as tally.js sends it.
//!
//! usage: fixedrate HOST:PORT SITE_KEY RATE SECONDS [CONNECTIONS]
//! prints: `sent N ok N non2xx N rate R/s p50 X ms p90 X ms p99 X ms p99.9 X ms max X ms`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Share {
    latencies_us: Vec<u64>,
    ok: u64,
    non2xx: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: fixedrate HOST:PORT SITE_KEY RATE SECONDS [CONNECTIONS]");
        std::process::exit(2);
    }
    let addr = args[0].clone();
    let site = args[1].clone();
    let rate: f64 = args[2].parse().expect("RATE: requests a second");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let connections: usize = args.get(4).map_or(256, |c| c.parse().expect("CONNECTIONS"));
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + Duration::from_secs_f64(seconds);
    let interval = connections as f64 / rate;
    let threads: Vec<_> = (0..connections)
        .map(|k| {
            let (addr, site) = (addr.clone(), site.clone());
            std::thread::spawn(move || {
                let offset = k as f64 / rate;
                connection(&addr, &site, k, start, end, offset, interval)
            })
        })
        .collect();
    let mut all = Vec::new();
    let (mut ok, mut non2xx) = (0, 0);
    for t in threads {
        let share = t.join().expect("a connection thread panicked");
        all.extend(share.latencies_us);
        ok += share.ok;
        non2xx += share.non2xx;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    println!(
        "sent {} ok {ok} non2xx {non2xx} rate {:.0}/s p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
        all.len(),
        all.len() as f64 / seconds,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
}

/// Sends one connection's share of the schedule: request `j` due at
/// `start + offset + j * interval`, until `end`.
fn connection(
    addr: &str,
    site: &str,
    k: usize,
    start: Instant,
    end: Instant,
    offset: f64,
    interval: f64,
) -> Share {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone the socket");
    let mut reader = BufReader::new(stream);
    let mut share = Share {
        latencies_us: Vec::new(),
        ok: 0,
        non2xx: 0,
    };
    for j in 0u64.. {
        let due = start + Duration::from_secs_f64(offset + j as f64 * interval);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let body = format!(
            r#"{{"site":"{site}","event_id":"fr_{k}_{j}","event_name":"page.view","session_id":"s_{k}_{}","url":"https://shop.example.com/p/{}","referrer":"https://news.example.org/","properties":{{}}}}"#,
            j % 97,
            j % 1000
        );
        let request = format!(
            "POST /v1/pixel HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\n\
             Origin: https://shop.example.com\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(request.as_bytes()).expect("send");
        let status = read_response(&mut reader);
        share
            .latencies_us
            .push(due.elapsed().as_micros().min(u64::MAX as u128) as u64);
        if (200..300).contains(&status) {
            share.ok += 1;
        } else {
            share.non2xx += 1;
        }
    }
    share
}

/// Reads one response (status line, headers, a `Content-Length` body) and
/// returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status");
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("Content-Length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    status
}
