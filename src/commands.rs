//! Runs a parsed command line: `serve` starts the appliance; every other
//! command becomes a [`Request`] sent to the running server's control socket,
//! or executed on the file directly when no server runs, and its answer is
//! printed to stdout.

use crate::app::App;
use crate::cli::{
    AdminCommand, Cli, Command, ExportFormat, ForwardCommand, SiteCommand, SqlFormat,
};
use crate::config::{Config, Overrides};
use crate::control::forward::NewDestination;
use crate::control::import::Progress;
use crate::control::{self, client, Request, SiteChange};
use crate::domain::forward::{Destination, Target};
use crate::domain::SystemClock;
use crate::store::export::Format;
use crate::store::sql::Table;
use crate::store::StoreError;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the command line; errors become a message and a non-zero exit in `main`.
pub fn run(cli: Cli) -> Result<()> {
    let overrides = Overrides {
        data_dir: cli.data_dir,
        config_file: cli.config,
        ..Default::default()
    };
    match cli.command {
        Command::Serve(args) => {
            crate::telemetry::init("info");
            let config = Config::load(Overrides {
                listen: args.listen,
                public_url: args.public_url,
                trusted_proxies: (!args.trusted_proxies.is_empty()).then_some(args.trusted_proxies),
                ..overrides
            })?;
            serve(config)
        }
        command => {
            crate::telemetry::init("warn");
            // Commands run without a server still print snippets with the
            // public URL the server would use.
            let config = Config::load(Overrides {
                listen: std::env::var("TALLY_LISTEN").ok(),
                public_url: std::env::var("TALLY_PUBLIC_URL").ok(),
                ..overrides
            })?;
            let (request, print) = plan(command)?;
            let answer = dispatch(&config, request)?;
            let mut out = std::io::stdout().lock();
            print(&answer, &mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

fn serve(config: Config) -> Result<()> {
    match crate::http::raise_open_file_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let listener = std::net::TcpListener::bind(&config.listen).with_context(|| {
        format!(
            "cannot listen on {} (is another server using it?)",
            config.listen
        )
    })?;
    let app = Arc::new(App::open(config, Arc::new(SystemClock))?);
    actix_web::rt::System::new().block_on(crate::server::run(
        app,
        listener,
        crate::server::shutdown_signal(),
    ))
}

/// Sends `request` to the running server, or runs it on the file directly.
/// A long command shows a progress bar on a terminal's stderr.
fn dispatch(config: &Config, request: Request) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let bar = ProgressBar::for_request(&request);
    let mut progress = |p: Progress| bar.show(p);
    loop {
        if let Some(stream) = client::connect(&config.socket_path()) {
            let answer = client::call(stream, &request, &mut progress);
            bar.finish();
            return answer;
        }
        match App::open_local(config.clone(), Arc::new(SystemClock)) {
            Ok(app) => {
                let answer = control::execute_with_progress(&app, request, &mut progress);
                bar.finish();
                app.shutdown();
                return Ok(answer?);
            }
            // A server that is starting holds the file before its socket is up.
            Err(e) if is_locked(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The import's progress bar: bytes read of the file, rate and ETA, on a
/// terminal only (nothing when stderr is piped or for other commands).
struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    fn for_request(request: &Request) -> Self {
        let wanted = matches!(request, Request::Import { .. }) && std::io::stderr().is_terminal();
        Self(wanted.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }))
    }

    fn show(&self, p: Progress) {
        if let Some(bar) = &self.0 {
            bar.set_length(p.total);
            bar.set_position(p.bytes);
            bar.set_message(format!("{} lines", p.lines));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn is_locked(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::Locked { .. })
    )
}

type Printer = Box<dyn Fn(&Value, &mut dyn Write) -> Result<()>>;

/// The request for a command and how to print its answer.
fn plan(command: Command) -> Result<(Request, Printer)> {
    Ok(match command {
        Command::Serve(_) => unreachable!("serve is handled by run"),
        Command::Site(SiteCommand::Add {
            name,
            origins,
            json,
        }) => (
            Request::SiteAdd { name, origins },
            if json {
                print_json()
            } else {
                Box::new(print_new_site)
            },
        ),
        Command::Site(SiteCommand::List { json }) => (
            Request::SiteList,
            if json {
                print_json()
            } else {
                Box::new(print_sites)
            },
        ),
        Command::Site(SiteCommand::RotateToken { site, json }) => (
            Request::SiteRotateToken { site },
            if json {
                print_json()
            } else {
                Box::new(|v, out| {
                    writeln!(
                        out,
                        "New API token for {}: {}",
                        text(&v["name"]),
                        text(&v["api_token"])
                    )?;
                    writeln!(
                        out,
                        "The old token no longer works. This token is shown only once."
                    )?;
                    Ok(())
                })
            },
        ),
        Command::Site(SiteCommand::Set {
            site,
            window,
            policy,
            merge,
            daily_quota,
            origins,
            keys,
            no_keys,
            timezone,
            retain,
            revenue_property,
            json,
        }) => {
            let change = SiteChange {
                window_secs: window.as_deref().map(parse_duration).transpose()?,
                policy,
                merge,
                daily_quota,
                origins: (!origins.is_empty()).then_some(origins),
                keys,
                no_keys,
                timezone: timezone.map(|tz| tz.name().to_owned()),
                retain_days: retain.as_deref().map(parse_days).transpose()?,
                revenue_property,
            };
            (
                Request::SiteSet { site, change },
                if json {
                    print_json()
                } else {
                    Box::new(print_sites)
                },
            )
        }
        Command::Forward(command) => plan_forward(command)?,
        Command::Admin(AdminCommand::SetPassword) => (
            Request::SetPasswordHash {
                hash: hash_password(&read_password()?)?,
            },
            Box::new(|_, out| Ok(writeln!(out, "Dashboard password set.")?)),
        ),
        Command::Sql {
            query,
            format,
            write,
        } => (
            Request::Sql { query, write },
            Box::new(move |v, out| {
                let table: Table = serde_json::from_value(v.clone())?;
                print_table(&table, format, out)
            }),
        ),
        Command::Import {
            file,
            site,
            json,
            dry_run,
        } => {
            let path = std::fs::canonicalize(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            (
                Request::Import {
                    path,
                    site,
                    dry_run,
                },
                if json {
                    print_json()
                } else {
                    Box::new(print_import)
                },
            )
        }
        Command::Inspect {
            site,
            event_id,
            name,
            json,
        } => (
            Request::Inspect {
                site,
                event_id,
                name,
            },
            if json {
                print_json()
            } else {
                Box::new(print_inspection)
            },
        ),
        Command::NearMisses { site, json } => (
            Request::NearMisses { site },
            if json {
                print_json()
            } else {
                Box::new(print_near_misses)
            },
        ),
        Command::Backup { out } => (
            Request::Backup {
                out: absolute(&out)?,
            },
            Box::new(|v, out| {
                Ok(writeln!(
                    out,
                    "Backed up {} events to {}. To restore: stop tally serve, copy that file to \
                     DATA_DIR/tally.duckdb (removing any tally.duckdb.wal), start.",
                    v["events"],
                    text(&v["path"])
                )?)
            }),
        ),
        Command::Export {
            site,
            format,
            out,
            from,
            to,
        } => {
            let format = match format {
                ExportFormat::Parquet => Format::Parquet,
                ExportFormat::Csv => Format::Csv,
                ExportFormat::Ndjson => Format::Ndjson,
            };
            let out = absolute(&out)?;
            let from = from.as_deref().map(|d| parse_time(d, false)).transpose()?;
            let to = to.as_deref().map(|d| parse_time(d, true)).transpose()?;
            (
                Request::Export {
                    site,
                    format,
                    out,
                    from,
                    to,
                },
                Box::new(|v, out| {
                    Ok(writeln!(
                        out,
                        "Exported {} events to {}",
                        v["rows"],
                        text(&v["path"])
                    )?)
                }),
            )
        }
    })
}

/// The request and printer of a `tally forward` command.
fn plan_forward(command: ForwardCommand) -> Result<(Request, Printer)> {
    Ok(match command {
        ForwardCommand::Add {
            site,
            webhook,
            secret,
            meta,
            token,
            graph_url,
            test_event_code,
            events,
            settle,
            rename,
            max_attempts,
            max_age,
            json,
        } => {
            let target = match (webhook, meta, token) {
                (Some(url), _, _) => Target::Webhook {
                    url,
                    secret: secret.unwrap_or_default(),
                },
                (None, Some(pixel_id), Some(token)) => Target::Meta {
                    pixel_id,
                    token,
                    graph_url,
                    test_event_code,
                },
                _ => bail!("give --webhook URL, or --meta PIXEL_ID with --token TOKEN"),
            };
            let destination = NewDestination {
                site,
                target,
                events,
                settle_secs: settle
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(0),
                rename: rename.into_iter().collect(),
                max_attempts,
                max_age_secs: max_age.as_deref().map(parse_duration).transpose()?,
            };
            (
                Request::ForwardAdd { destination },
                if json {
                    print_json()
                } else {
                    Box::new(print_new_destination)
                },
            )
        }
        ForwardCommand::List { site, json } => (
            Request::ForwardList { site },
            if json {
                print_json()
            } else {
                Box::new(print_destinations)
            },
        ),
        ForwardCommand::Remove { id } => (
            Request::ForwardRemove { id },
            Box::new(|v, out| Ok(writeln!(out, "Removed destination {}.", v["removed"])?)),
        ),
        ForwardCommand::Retry { id } => (
            Request::ForwardRetry { id },
            Box::new(|v, out| {
                Ok(writeln!(
                    out,
                    "Requeued {} parked events of destination {}.",
                    v["requeued"], v["id"]
                )?)
            }),
        ),
    })
}

fn print_new_destination(v: &Value, out: &mut dyn Write) -> Result<()> {
    let d: Destination = serde_json::from_value(v.clone())?;
    writeln!(out, "Added destination {} for site {}.", d.id, d.site)?;
    if let Target::Webhook { url, secret } = &d.target {
        writeln!(out, "  webhook: {url}")?;
        writeln!(
            out,
            "  secret:  {secret}   (verify X-Tally-Signature with it; shown only now)"
        )?;
    }
    Ok(())
}

fn print_destinations(v: &Value, out: &mut dyn Write) -> Result<()> {
    let listed: Vec<crate::control::forward::Listed> = serde_json::from_value(v.clone())?;
    let columns = [
        "id",
        "site",
        "kind",
        "target",
        "events",
        "delivered",
        "pending",
        "parked",
    ];
    let rows = listed
        .iter()
        .map(|d| {
            vec![
                Value::from(d.id),
                Value::from(d.site.clone()),
                Value::from(d.kind.clone()),
                Value::from(d.target.clone()),
                Value::from(
                    d.events
                        .as_ref()
                        .map_or("all but page.view".to_owned(), |e| e.join(" ")),
                ),
                Value::from(d.counts.delivered),
                Value::from(d.counts.pending),
                Value::from(d.counts.parked),
            ]
        })
        .collect();
    let table = Table {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
    };
    print_table(&table, SqlFormat::Table, out)
}

fn print_json() -> Printer {
    Box::new(|v, out| Ok(writeln!(out, "{}", serde_json::to_string_pretty(v)?)?))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_new_site(v: &Value, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "Created site {}.", text(&v["name"]))?;
    writeln!(out, "  site_key:  {}", text(&v["site_key"]))?;
    writeln!(
        out,
        "  api_token: {}   (secret; shown only this once)",
        text(&v["api_token"])
    )?;
    writeln!(
        out,
        "\nPaste this into every page of the site, in <head>:\n\n{}\n",
        text(&v["snippet"])
    )?;
    writeln!(
        out,
        "Send server-side events with: Authorization: Bearer <api_token> to /v1/events"
    )?;
    Ok(())
}

fn print_sites(v: &Value, out: &mut dyn Write) -> Result<()> {
    let sites = match v {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let columns = [
        "name",
        "site_key",
        "origins",
        "window_secs",
        "policy",
        "merge_properties",
        "daily_quota",
        "secondary_keys",
        "timezone",
        "retain_days",
    ];
    let keys = |v: &Value| -> Value {
        let pairs: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, prop)| format!("{name}={}", text(prop)))
            .collect();
        Value::String(pairs.join(" "))
    };
    let rows = sites
        .iter()
        .map(|s| {
            columns
                .iter()
                .map(|c| match *c {
                    "secondary_keys" => keys(&s[*c]),
                    _ => s[*c].clone(),
                })
                .collect()
        })
        .collect();
    let table = Table {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
    };
    print_table(&table, SqlFormat::Table, out)
}

fn print_inspection(v: &Value, out: &mut dyn Write) -> Result<()> {
    let found: crate::store::inspect::Inspection = serde_json::from_value(v.clone())?;
    if found.events.is_empty() && found.unmatched.is_empty() {
        writeln!(
            out,
            "No copy of {:?} in site {}.",
            found.event_id, found.site
        )?;
        return Ok(());
    }
    for e in &found.events {
        let mut about = vec![format!("window from {}", e.window_start)];
        if e.opened == "after_window" {
            about.push("a new window after the last one closed".into());
        }
        if let Some(k) = &e.secondary_key {
            about.push(format!("secondary key {}={}", k.property, k.value));
        }
        about.push(format!("sources seen: {}", e.sources_seen.join(", ")));
        writeln!(
            out,
            "{} {} ({})",
            e.event_name,
            e.event_id,
            about.join("; ")
        )?;
        for c in &e.copies {
            print_copy(c, out)?;
        }
    }
    if !found.unmatched.is_empty() {
        writeln!(out, "Dropped copies whose kept row is gone:")?;
        for c in &found.unmatched {
            print_copy(c, out)?;
        }
    }
    Ok(())
}

fn print_copy(c: &crate::store::inspect::CopySeen, out: &mut dyn Write) -> Result<()> {
    let fate = if c.kept {
        "KEPT".to_owned()
    } else {
        let matched = match (&c.matched_key, &c.matched_value) {
            (Some(k), Some(v)) => format!(" [{k}={v}]"),
            _ => String::new(),
        };
        format!("dropped: {}{matched}", c.why.as_deref().unwrap_or_default())
    };
    let filled = c
        .filled
        .as_ref()
        .map(|f| format!("; filled in {f}"))
        .unwrap_or_default();
    writeln!(
        out,
        "  {}  {:<6} {}  {fate}{filled}",
        c.arrived, c.source, c.event_id
    )?;
    Ok(())
}

/// "pair" or "pairs".
fn pairs(n: usize) -> &'static str {
    if n == 1 {
        "pair"
    } else {
        "pairs"
    }
}

fn print_near_misses(v: &Value, out: &mut dyn Write) -> Result<()> {
    let report: crate::domain::near_miss::Report = serde_json::from_value(v.clone())?;
    let total: usize = report.kinds.iter().map(|k| k.count).sum();
    writeln!(
        out,
        "{total} near-miss {} among {} events in the window.",
        pairs(total),
        report.events_checked
    )?;
    for k in report.kinds.iter().filter(|k| k.count > 0) {
        writeln!(out, "{} {} of {}:", k.count, pairs(k.count), k.kind.label())?;
        for p in &k.examples {
            writeln!(
                out,
                "  {} {:?} ({})  ~  {} {:?} ({})",
                p.a.event_name,
                p.a.event_id,
                p.a.sources.join("+"),
                p.b.event_name,
                p.b.event_id,
                p.b.sources.join("+")
            )?;
        }
    }
    Ok(())
}

fn print_import(v: &Value, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "accepted {}, deduplicated {}, rejected {}",
        v["accepted"], v["deduplicated"], v["rejected"]
    )?;
    for e in v["errors"].as_array().into_iter().flatten() {
        eprintln!(
            "line {}: {}: {}",
            e["line"],
            text(&e["code"]),
            text(&e["message"])
        );
    }
    Ok(())
}

/// Prints a query result as an aligned table, CSV, or a JSON array of objects
/// (keys in column order, numbers as numbers).
pub fn print_table(t: &Table, format: SqlFormat, out: &mut dyn Write) -> Result<()> {
    match format {
        SqlFormat::Json => {
            let rows: Vec<String> = t
                .rows
                .iter()
                .map(|row| {
                    let fields: Vec<String> = t
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| format!("{}:{}", Value::String(c.clone()), v))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                })
                .collect();
            writeln!(out, "[{}]", rows.join(",\n"))?;
        }
        SqlFormat::Csv => {
            writeln!(
                out,
                "{}",
                t.columns
                    .iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for row in &t.rows {
                writeln!(
                    out,
                    "{}",
                    row.iter()
                        .map(|v| csv_field(&cell(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                )?;
            }
        }
        SqlFormat::Table => {
            let cells: Vec<Vec<String>> = t
                .rows
                .iter()
                .map(|r| r.iter().map(cell).collect())
                .collect();
            let widths: Vec<usize> = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |vals: Vec<&str>| -> String {
                vals.iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .trim_end()
                    .to_owned()
            };
            writeln!(
                out,
                "{}",
                line(t.columns.iter().map(String::as_str).collect())
            )?;
            writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("-+-")
            )?;
            for row in &cells {
                writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
            }
            let n = t.rows.len();
            writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
        }
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `48h`, `90m`, `2d`, `3600s` or plain seconds → seconds.
fn parse_duration(s: &str) -> Result<u32> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 48h, 90m or 2d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("{s:?} is not a duration like 48h, 90m or 2d"),
    };
    n.checked_mul(scale).context("the duration is too long")
}

/// `--retain`: `400d`, `12w`… in whole days; `0` or `off` keeps everything.
fn parse_days(s: &str) -> Result<u32> {
    if s == "off" || s == "0" {
        return Ok(0);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u32 = num
        .parse()
        .with_context(|| format!("{s:?} is not a retention like 400d, 12w or 0 (keep all)"))?;
    let days = match unit {
        "d" | "" => n,
        "w" => n.checked_mul(7).context("the retention is too long")?,
        "y" => n.checked_mul(365).context("the retention is too long")?,
        _ => bail!("{s:?} is not a retention like 400d, 12w or 0 (keep all)"),
    };
    if days != 0 && days < 2 {
        bail!("keep events for at least 2 days (the longest dedup window is 30 days; a shorter retention deletes only events past their window)");
    }
    Ok(days)
}

/// A `--from`/`--to` value in µs: a day (a `--to` day is inclusive) or RFC 3339.
fn parse_time(s: &str, end: bool) -> Result<i64> {
    crate::domain::time::parse_day_or_instant(s, end)
        .with_context(|| format!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

fn absolute(p: &std::path::Path) -> Result<std::path::PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn read_password() -> Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New dashboard password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            bail!("the two passwords differ; nothing was changed");
        }
        first
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.lines().next().unwrap_or_default().to_owned()
    };
    if password.chars().count() < 8 {
        bail!("the password must have at least 8 characters; nothing was changed");
    }
    Ok(password)
}

/// An Argon2id PHC string for `password`.
fn hash_password(password: &str) -> Result<String> {
    Ok(crate::domain::password::hash(password)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("48h").unwrap(), 172_800);
        assert_eq!(parse_duration("90m").unwrap(), 5_400);
        assert_eq!(parse_duration("120").unwrap(), 120);
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_days("400d").unwrap(), 400);
        assert_eq!(parse_days("2w").unwrap(), 14);
        assert_eq!(parse_days("off").unwrap(), 0);
        assert!(parse_days("1d").is_err());
        assert!(parse_days("forever").is_err());
    }

    #[test]
    fn json_rows_keep_column_order_and_numbers() {
        let t = Table {
            columns: vec!["z".into(), "a".into()],
            rows: vec![vec![Value::from(1), Value::from("x")]],
        };
        let mut out = Vec::new();
        print_table(&t, SqlFormat::Json, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "[{\"z\":1,\"a\":\"x\"}]\n");
    }
}
