//! Where the appliance listens and keeps its data: CLI flags, then `TALLY_*`
//! environment variables (both read by clap), then an optional TOML file,
//! then defaults. [`Config::resolve`] is a pure function of those inputs.

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address the HTTP server binds, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Directory holding `tally.duckdb` and the control socket.
    pub data_dir: PathBuf,
    /// Public base URL of the appliance, used in the pixel snippet.
    pub public_url: String,
    /// Whether `public_url` was derived from the listen address (no flag,
    /// env or file value); then the URL the server last served on wins.
    pub public_url_is_default: bool,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers are believed;
    /// from anyone else the peer address is the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// The optional TOML file (`--config`, `TALLY_CONFIG`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::listen`].
    pub listen: Option<String>,
    /// See [`Config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Config::public_url`].
    pub public_url: Option<String>,
    /// See [`Config::trusted_proxies`]: addresses or CIDR ranges.
    pub trusted_proxies: Option<Vec<String>>,
}

/// Values given on the command line or in the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `TALLY_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` / `TALLY_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--public-url` / `TALLY_PUBLIC_URL`.
    pub public_url: Option<String>,
    /// `--config` / `TALLY_CONFIG`.
    pub config_file: Option<PathBuf>,
    /// `--trusted-proxy` / `TALLY_TRUSTED_PROXIES` (comma-separated).
    pub trusted_proxies: Option<Vec<String>>,
}

impl Config {
    /// Reads the config file named in `o`, if any, and resolves.
    pub fn load(o: Overrides) -> Result<Config> {
        let file = match &o.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("config file {} is not valid", path.display()))?
            }
            None => FileConfig::default(),
        };
        Config::resolve(o, file, default_data_dir())
    }

    /// Flags and env win over the file, the file over defaults.
    pub fn resolve(o: Overrides, file: FileConfig, default_dir: Option<PathBuf>) -> Result<Config> {
        let listen = o
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("listen address {listen:?} must look like 127.0.0.1:8080"))?;
        let data_dir = o.data_dir.or(file.data_dir).or(default_dir).context(
            "no home directory to keep data in; pass --data-dir DIR or set TALLY_DATA_DIR",
        )?;
        let explicit = o.public_url.or(file.public_url);
        let public_url_is_default = explicit.is_none();
        let public_url = explicit
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let trusted_proxies = o
            .trusted_proxies
            .or(file.trusted_proxies)
            .unwrap_or_default()
            .iter()
            .map(|p| parse_proxy(p))
            .collect::<Result<_>>()?;
        Ok(Config {
            listen,
            data_dir,
            public_url,
            public_url_is_default,
            trusted_proxies,
        })
    }

    /// The DuckDB file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("tally.duckdb")
    }

    /// The control socket through which CLI commands reach a running server.
    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join("tally.sock")
    }

    /// Creates the data directory (owner-only) if it is missing.
    pub fn ensure_data_dir(&self) -> Result<()> {
        create_private_dir(&self.data_dir)
    }
}

/// An address (`10.0.0.1`, `::1`) or a range (`10.0.0.0/8`).
fn parse_proxy(text: &str) -> Result<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .with_context(|| {
            format!("trusted proxy {text:?} must be an address or a range, e.g. 127.0.0.1 or 10.0.0.0/8")
        })
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The platform's data directory for Tally, e.g. `~/.local/share/tally`.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "tally").map(|d| d.data_dir().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file = FileConfig {
            listen: Some("0.0.0.0:9000".into()),
            data_dir: Some("/srv/file".into()),
            public_url: None,
            trusted_proxies: Some(vec!["10.0.0.0/8".into()]),
        };
        let o = Overrides {
            data_dir: Some("/srv/flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(o, file, Some("/home/x".into())).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.data_dir, PathBuf::from("/srv/flag"));
        assert_eq!(c.public_url, "http://0.0.0.0:9000");
        assert_eq!(
            c.trusted_proxies,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let o = Overrides {
            trusted_proxies: Some(vec!["127.0.0.1".into(), " ::1 ".into(), "fd00::/8".into()]),
            ..Default::default()
        };
        let c = Config::resolve(o, FileConfig::default(), Some("/d".into())).unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(c.trusted_proxies[0].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        let bad = Overrides {
            trusted_proxies: Some(vec!["localhost".into()]),
            ..Default::default()
        };
        assert!(Config::resolve(bad, FileConfig::default(), Some("/d".into())).is_err());
    }

    #[test]
    fn defaults_and_bad_listen() {
        let c = Config::resolve(
            Overrides::default(),
            FileConfig::default(),
            Some("/d".into()),
        )
        .unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.db_path(), PathBuf::from("/d/tally.duckdb"));
        let o = Overrides {
            listen: Some("nope".into()),
            ..Default::default()
        };
        assert!(Config::resolve(o, FileConfig::default(), Some("/d".into())).is_err());
    }
}
