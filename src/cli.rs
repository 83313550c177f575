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
    /// TOML file with listen, data_dir and public_url
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
    /// Run one SQL statement against the store (read-only unless --write).
    Sql {
        /// The statement.
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
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
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
