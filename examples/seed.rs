//! Seeds a data dir with N synthetic unique events (and their dropped
//! copies) written straight into the store, for dashboard benchmarks and
//! demos: a realistic mix of event names, pages, referrers and sources.
//!
//! ```text
//! cargo run --release --example seed -- DATA_DIR [events=10000000] [days=30] [site=shop]
//! ```
//! The server must be stopped (the store takes one writer). Creates the site
//! (origin https://shop.example.com) if it does not exist and prints its token.

use std::sync::Arc;
use tally::app::App;
use tally::config::{Config, FileConfig, Overrides};
use tally::domain::row::{DroppedRow, EventRow, Matched, Rule};
use tally::domain::{Event, KeyHash, Source, SystemClock};
use tally::store::events::append;

/// A tiny xorshift generator: repeatable seeds, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PAGES: [&str; 12] = [
    "/",
    "/pricing",
    "/blog/duckdb-at-the-edge",
    "/blog/counting-once",
    "/docs",
    "/docs/pixel",
    "/docs/api",
    "/checkout",
    "/checkout/thanks",
    "/account",
    "/signup",
    "/about",
];
const REFERRERS: [&str; 6] = [
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "https://duckduckgo.com/",
    "https://twitter.com/",
    "https://github.com/",
    "https://www.reddit.com/",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: seed DATA_DIR [events] [days] [site]");
        std::process::exit(2);
    };
    let n: u64 = args.get(1).map_or(Ok(10_000_000), |s| s.parse())?;
    let days: f64 = args.get(2).map_or(Ok(30.0), |s| s.parse())?;
    let site_name = args.get(3).cloned().unwrap_or_else(|| "shop".into());
    let config = Config::resolve(
        Overrides {
            data_dir: Some(dir.into()),
            ..Default::default()
        },
        FileConfig::default(),
        None,
    )?;
    let app = App::open(config, Arc::new(SystemClock))?;
    let site = match app.site(&site_name) {
        Ok(s) => s,
        Err(_) => {
            let created = app.add_site(&site_name, &["https://shop.example.com".to_owned()])?;
            println!("created site {site_name}; api_token {}", created.api_token);
            app.site(&site_name)?
        }
    };
    let conn = app.store.connect()?;
    let now = chrono::Utc::now().timestamp_micros();
    let span = (days * 86_400.0 * 1e6) as i64;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let started = std::time::Instant::now();
    let (mut rows, mut dups) = (Vec::new(), Vec::new());
    for i in 0..n {
        // Oldest first, so received_at grows like live traffic.
        let at = now - span + (span / n as i64) * i as i64;
        let roll = rng.below(100);
        let (name, id) = match roll {
            0..=64 => ("page.view", format!("evt_{i:x}")),
            65..=74 => ("order.completed", format!("ord_{i}")),
            75..=84 => ("cart.add", format!("evt_{i:x}")),
            85..=91 => ("signup", format!("usr_{i}")),
            _ => ("newsletter.subscribe", format!("evt_{i:x}")),
        };
        // Page views come from the pixel; conversions from the pixel, the
        // server, or (most often) both.
        let seen = match (name, rng.below(10)) {
            ("page.view", _) => Source::Pixel.bit(),
            (_, 0..=1) => Source::Server.bit(),
            (_, 2) => Source::Pixel.bit(),
            _ => Source::Pixel.bit() | Source::Server.bit(),
        };
        let source = if seen & Source::Pixel.bit() != 0 {
            Source::Pixel
        } else {
            Source::Server
        };
        let page = PAGES[rng.below(PAGES.len() as u64) as usize];
        let referrer = (rng.below(3) == 0)
            .then(|| REFERRERS[rng.below(REFERRERS.len() as u64) as usize].to_owned());
        let props = match name {
            "order.completed" => Some(format!(
                r#"{{"order_id":"{i}","total":{}.{:02}}}"#,
                rng.below(400),
                rng.below(100)
            )),
            "signup" => Some(r#"{"plan":"pro"}"#.to_owned()),
            _ => None,
        };
        if seen == Source::Pixel.bit() | Source::Server.bit() {
            dups.push(DroppedRow {
                site: site.clone(),
                event_id: id.clone(),
                event_name: name.to_owned(),
                source: Source::Server,
                received_at: at + 2_000_000,
                kept_source: Source::Pixel,
                rule: Rule::SameKey,
                matched: Matched::EventId,
                filled: None,
                revenue: None,
                replaced_by: None,
            });
        }
        rows.push(EventRow {
            site: site.clone(),
            key: KeyHash::of(site.id, name, &id),
            skey: None,
            seen,
            occurred_at: at,
            received_at: at,
            pixel_keys: None,
            merges: 0,
            fingerprint: 0,
            event: Event {
                event_id: id,
                event_name: name.to_owned(),
                source,
                occurred_at: Some(at),
                session_id: Some(format!("s_{}", i / 5)),
                visitor_id: Some(format!("{:016x}", i / 12)),
                url: Some(format!("https://shop.example.com{page}")),
                referrer,
                properties: props,
                user_data: None,
                user_id: None,
                anonymous_id: None,
            },
        });
        if rows.len() == 200_000 || i + 1 == n {
            tally::store::transaction(&conn, |c| append(c, &rows, &dups))?;
            rows.clear();
            dups.clear();
            eprint!("\rseeded {} / {n}", i + 1);
        }
    }
    conn.execute_batch("CHECKPOINT")?;
    eprintln!(
        "\nseeded {n} events over {days} days in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
