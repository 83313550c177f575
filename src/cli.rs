//! The command line (clap derive), exactly as SPEC §1 names it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Tally: self-hosted analytics that counts every event once.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about)]
pub struct Cli {
    /// Directory holding tally.duckdb [default: the platform data dir, e.g. ~/.local/share/tally]
    #[arg(long, global = true, env = "TALLY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with listen, data_dir, public_url and trusted_proxies
    #[arg(long, global = true, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: ingest API, pixel, dashboard.
    Serve(ServeArgs),
    /// Manage sites.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Dashboard administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Forward each unique event to webhooks or Meta's Conversions API.
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Run one SQL statement against the store (read-only unless --write).
    Sql {
        /// The statement (it may start with a `--` comment).
        #[arg(allow_hyphen_values = true)]
        query: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: SqlFormat,
        /// Allow the statement to change data.
        #[arg(long)]
        write: bool,
    },
    /// Backfill events from an NDJSON file (one /v1/events event per line).
    Import {
        /// The NDJSON file.
        file: PathBuf,
        /// Site name or key.
        #[arg(long)]
        site: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Validate and decide every line as the import would, store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show every copy of an event: which was kept, which rule dropped each.
    Inspect {
        /// Site name or key.
        site: String,
        /// The event_id to look up (also finds copies matched by its secondary key).
        event_id: String,
        /// Only events of this name.
        #[arg(long)]
        name: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report ids and names that almost match between sources (case, space,
    /// prefix/suffix, separators): events that failed to deduplicate.
    NearMisses {
        /// Site name or key.
        site: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy the whole store to a new DuckDB file, consistently, while serving.
    Backup {
        /// The new file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Export a site's unique events.
    Export {
        /// Site name or key.
        #[arg(long)]
        site: String,
        /// Output format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// First day (YYYY-MM-DD) or instant (RFC 3339), inclusive.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Last day (YYYY-MM-DD, inclusive) or instant (RFC 3339, exclusive).
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
    },
}

/// `tally serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "TALLY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Public base URL used in the pixel snippet [default: http:// + the listen address]
    #[arg(long, env = "TALLY_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// A reverse proxy whose X-Forwarded-For / Forwarded headers are trusted:
    /// an address or a range (repeatable; env: comma-separated)
    #[arg(
        long = "trusted-proxy",
        env = "TALLY_TRUSTED_PROXIES",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
}

/// `tally site …`.
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Create a site; prints its key, its API token (once) and the snippet.
    Add {
        /// Unique name, e.g. shop.
        name: String,
        /// Allowed page origin, e.g. https://shop.example.com (repeatable).
        #[arg(long = "origin", value_name = "URL", required = true)]
        origins: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List sites.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new API token; the old one stops working at once.
    RotateToken {
        /// Site name or key.
        site: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Change a site's dedup window, policy, merge, quota or origins.
    Set {
        /// Site name or key.
        site: String,
        /// Dedup window, e.g. 48h, 90m, 2d (1 minute to 30 days).
        #[arg(long, value_name = "DURATION")]
        window: Option<String>,
        /// first_wins or prefer_pixel.
        #[arg(long)]
        policy: Option<String>,
        /// Fill in missing property keys from later copies (true/false).
        #[arg(long)]
        merge: Option<bool>,
        /// Accepted events per UTC day; 0 turns the quota off.
        #[arg(long, value_name = "N")]
        daily_quota: Option<u64>,
        /// Replace the allowed origins (repeatable).
        #[arg(long = "origin", value_name = "URL")]
        origins: Vec<String>,
        /// Declare a property as an extra dedup key for an event name, e.g.
        /// order.completed=order_id (repeatable).
        #[arg(long = "key", value_name = "EVENT_NAME=PROPERTY", value_parser = parse_key)]
        keys: Vec<(String, String)>,
        /// Remove the secondary key of an event name (repeatable).
        #[arg(long = "no-key", value_name = "EVENT_NAME")]
        no_keys: Vec<String>,
        /// The site's time zone, e.g. Europe/Berlin (days and charts follow it).
        #[arg(long, value_name = "AREA/CITY", value_parser = parse_timezone)]
        timezone: Option<chrono_tz::Tz>,
        /// Keep events this long, e.g. 400d; older ones are deleted. 0 keeps all.
        #[arg(long, value_name = "DURATION")]
        retain: Option<String>,
        /// The property holding an event's revenue [default: the first of value, revenue, total].
        #[arg(long, value_name = "NAME")]
        revenue_property: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `NAME=VALUE`, e.g. `EVENT_NAME=PROPERTY`.
fn parse_key(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, prop)) if !name.trim().is_empty() && !prop.trim().is_empty() => {
            Ok((name.trim().to_owned(), prop.trim().to_owned()))
        }
        _ => Err(format!(
            "{s:?} must be two names joined by '=', e.g. order.completed=order_id"
        )),
    }
}

/// An IANA time zone name.
fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("{s:?} is not a time zone; use an IANA name such as Europe/Berlin or America/Los_Angeles")
    })
}

/// `tally forward …`.
// Parsed once per process: the size of the `add` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Add a destination for a site's unique events.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["webhook", "meta"])))]
    Add {
        /// Site name or key.
        site: String,
        /// POST each event as signed JSON to this URL.
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
        /// The webhook signing secret [default: a new random one, printed once].
        #[arg(long, requires = "webhook", conflicts_with = "meta")]
        secret: Option<String>,
        /// Send to Meta's Conversions API for this pixel (dataset) id.
        #[arg(long, value_name = "PIXEL_ID", requires = "token")]
        meta: Option<String>,
        /// The Conversions API access token.
        #[arg(long, requires = "meta", conflicts_with = "webhook")]
        token: Option<String>,
        /// Graph API base URL (a proxy, or a test server).
        #[arg(long, value_name = "URL", requires = "meta", default_value = crate::domain::forward::META_GRAPH_URL)]
        graph_url: String,
        /// Meta's test event code: events show in Events Manager's Test Events only.
        #[arg(
            long,
            value_name = "CODE",
            requires = "meta",
            conflicts_with = "webhook"
        )]
        test_event_code: Option<String>,
        /// Event names to forward [default: every event but page.view].
        #[arg(long, value_name = "NAME", num_args = 1..)]
        events: Vec<String>,
        /// Wait this long after an event's first copy before sending it, so
        /// later copies can merge in, e.g. 60s [default: 0].
        #[arg(long, value_name = "DURATION")]
        settle: Option<String>,
        /// Rename an event on the way out, e.g. order.completed=Purchase (repeatable).
        #[arg(long, value_name = "FROM=TO", value_parser = parse_key)]
        rename: Vec<(String, String)>,
        /// Park an event after this many failed attempts [default: 25].
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// Park an event still undelivered this long after it arrived [default: 3d].
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List destinations with their delivered / pending / parked counts.
    List {
        /// Only this site's.
        site: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a destination (its undelivered events are dropped).
    Remove {
        /// The destination's id.
        id: u32,
    },
    /// Put a destination's parked events back in line.
    Retry {
        /// The destination's id.
        id: u32,
    },
}

/// `tally admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set the dashboard password (prompted, or read from stdin when piped).
    SetPassword,
}

/// `tally sql --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SqlFormat {
    /// Aligned columns.
    Table,
    /// CSV with a header.
    Csv,
    /// A JSON array of row objects.
    Json,
}

/// `tally export --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header.
    Csv,
    /// One event per line, in the /v1/events shape.
    Ndjson,
}
